"""prefkit.train."""
