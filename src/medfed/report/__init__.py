"""medfed.report."""
