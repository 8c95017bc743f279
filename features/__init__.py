"""features: tables in, features out. Knows tables, never models."""
