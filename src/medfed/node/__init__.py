"""medfed.node."""
