"""The side-by-side benchmark: ``make bench`` (``python -m bench.run``). See docs/benchmarks.md."""
