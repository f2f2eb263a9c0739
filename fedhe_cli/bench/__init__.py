"""Benchmarks behind ``fedhe bench``: our path and the baselines in one run."""
