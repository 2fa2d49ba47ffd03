"""The benchmarks behind docs/benchmarks.md: ``python -m benchmarks --list`` names the entries."""
