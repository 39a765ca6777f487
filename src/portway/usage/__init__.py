"""Usage: what a request spent (records, cost) and the batched writer that stores it."""
