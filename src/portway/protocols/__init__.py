"""Pure translators between the protocols portway serves and chat completions, its internal shape (no I/O)."""
