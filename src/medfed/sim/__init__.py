"""medfed.sim."""
