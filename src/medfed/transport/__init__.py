"""medfed.transport."""
