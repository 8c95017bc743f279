"""Benchmarks: speed, memory and quality targets, each measured against a baseline in the same run."""
