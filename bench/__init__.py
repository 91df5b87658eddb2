"""Benchmarks: this system against the limit and the alternatives, side by side (not tests)."""
