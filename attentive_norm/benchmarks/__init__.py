"""Benchmarks: AN versus BatchNorm, layer-level and whole-network, measured side by side."""
