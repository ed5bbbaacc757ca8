"""Benchmarks and evaluations; each script prints what docs/BENCHMARKS.md records."""
