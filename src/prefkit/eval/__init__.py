"""prefkit.eval."""
