"""The one home of what tests and benchmarks share: harnesses, real peers started on loopback,
synthetic data, and the single wait, port and settings helpers. Test modules import from here,
never from each other or from conftest."""
