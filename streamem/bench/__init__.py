"""Benchmarks behind ``streamem bench``: each measures streamem and its baseline in one run."""
