"""Benchmarks of casfs against the direct client and local files; see bench/README.md."""
