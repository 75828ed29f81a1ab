"""Benchmarks that print numbers: ``prompt bench dispatch``."""
