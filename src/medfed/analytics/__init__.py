"""medfed.analytics: federated statistics that equal the pooled answer, under disclosure control."""
