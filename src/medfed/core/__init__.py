"""Core values shared by every layer: parameters, records, errors, configuration parsing."""
