"""prefkit.models."""
