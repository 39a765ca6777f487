"""portway: a self-hosted, OpenAI-compatible AI gateway."""

__version__ = "0.1.0"
