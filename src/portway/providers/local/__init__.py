"""The in-process local model provider (llama.cpp via llama-cpp-python; `pip install portway[local]`)."""

from portway.providers.local.chat import LocalProvider
from portway.providers.local.model import default_model_path

__all__ = ["LocalProvider", "default_model_path"]
