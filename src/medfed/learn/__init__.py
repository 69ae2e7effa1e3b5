"""medfed.learn."""
