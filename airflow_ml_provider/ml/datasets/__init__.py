"""Synthetic data sets used by the example DAGs, the demo, the tests and the benchmarks."""
