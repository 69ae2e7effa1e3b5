"""medfed.data."""
