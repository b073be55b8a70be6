"""Test support shared by tests, benchmarks and the demo: fake kubelet, real cluster."""
