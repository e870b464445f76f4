"""Reproducible benchmarks of dyups-syncer against simulated proxies: `python -m bench --help`."""
