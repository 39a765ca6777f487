"""Hugging Face's inference router, which speaks OpenAI chat at https://router.huggingface.co/v1.

Only the declarative part differs from the OpenAI-compatible base: the type name, the default base URL
(applied by the config loader) and its error bodies, which may be `{"error": "message"}` (handled by the
shared parser).
Model ids may carry a `:provider` suffix (e.g. `meta-llama/Llama-3.1-8B-Instruct:cerebras`): passed as is.
"""

from __future__ import annotations

from portway.providers.openai_compat import OpenAICompatProvider


class HuggingFaceProvider(OpenAICompatProvider):
    type_name = "huggingface"
    default_base_url = "https://router.huggingface.co/v1"
