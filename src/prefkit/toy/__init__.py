"""prefkit.toy."""
