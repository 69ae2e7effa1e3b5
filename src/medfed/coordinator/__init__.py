"""medfed.coordinator."""
