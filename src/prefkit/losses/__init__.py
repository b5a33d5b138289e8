"""prefkit.losses."""
