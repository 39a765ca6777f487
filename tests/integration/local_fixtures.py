"""Helpers for the tests of the local models (llama.cpp, the media extra)."""

from __future__ import annotations

import importlib.util

import pytest


def skip_unless_installed(*modules: str, reason: str) -> None:
    """Skip the calling module unless every one of `modules` is installed.

    Unlike `pytest.importorskip` this does not import them: `sentence_transformers` pulls in torch (~5 s of
    CPU), and under xdist every worker collects every module, so importing at collection costs that once per
    worker even where no local-media test runs. The tests that use a model import it when they load it."""
    if any(importlib.util.find_spec(name) is None for name in modules):
        pytest.skip(reason, allow_module_level=True)


MEDIA = ("sentence_transformers", "piper", "faster_whisper")
