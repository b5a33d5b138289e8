"""prefkit.data."""
