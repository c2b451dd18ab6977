"""Benchmarks, each printing its figures beside a named peer measured in the same run. Run
them from the repository root as modules: `.venv/bin/python -m bench.ingest` (bench/README.md)."""
