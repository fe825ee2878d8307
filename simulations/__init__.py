"""Simulation harness: client partitions of public datasets, experiment sweeps, benchmarks."""
