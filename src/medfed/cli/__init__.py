"""medfed.cli."""
