"""portway's own HTTP/1.1: the upstream client (the only network IO to providers) and the server protocol."""
