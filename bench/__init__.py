"""portway's differential benchmark harness: `make bench` runs `python -m bench.run`.

See docs/performance.md."""
