"""prefkit.cli."""
