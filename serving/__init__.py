"""serving: the BentoML service and the candidate -> filter -> rank -> explain pipeline."""
