"""Provider declarations, the registry, and what the local model refuses (no model loaded here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from portway.config import parse_config
from portway.http.client import Transport
from portway.providers.base import BaseProvider, FailureKind, ProviderSettings, UpstreamFailure
from portway.providers.local import LocalProvider
from portway.providers.local.params import build_request
from portway.providers.registry import create_provider, provider_class, provider_types
from portway.runtime import Runtime
from portway.settings import Settings
from portway.usage.cost import Pricing

MESSAGES = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize("type_name", provider_types())
def test_each_type_declares_itself(type_name: str) -> None:
    cls = provider_class(type_name)
    assert issubclass(cls, BaseProvider) and cls.type_name == type_name
    assert cls.Options.model_config.get("extra") == "forbid"


def test_declarations() -> None:
    openai, hf, local = (provider_class(t) for t in ("openai", "huggingface", "local"))
    assert (openai.default_base_url, openai.uses_base_url, openai.needs_key, openai.free) == (
        None,
        True,
        True,
        False,
    )
    assert hf.default_base_url == "https://router.huggingface.co/v1" and hf.needs_key
    assert (local.uses_base_url, local.needs_key, local.free) == (False, False, True)


def test_unknown_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"known types: anthropic, gemini, huggingface, local, openai"):
        provider_class("nope")


async def test_one_constructor_for_every_type() -> None:
    transport = Transport()
    try:
        for type_name in provider_types():
            settings = ProviderSettings("p", type_name, "http://upstream.test/v1")
            provider = create_provider(settings, transport)
            assert provider.name == "p"
            if type_name != "local":  # the local one's warm() loads the model
                await provider.warm()  # the shared no-op
            await provider.aclose()
    finally:
        await transport.aclose()


def test_stray_options_are_refused_when_built_directly() -> None:
    with pytest.raises(ValueError, match="n_ctxx"):
        LocalProvider(ProviderSettings("local", "local", options={"n_ctxx": 1}))
    with pytest.raises(ValueError, match="extra"):
        create_provider(ProviderSettings("o", "openai", "http://o.test", options={"x": 1}), Transport())


def test_loading_config_and_building_local_does_not_import_llama_cpp() -> None:
    code = (
        "import sys\n"
        "from portway.config import default_config\n"
        "from portway.providers.registry import create_provider\n"
        "from portway.providers.base import ProviderSettings\n"
        "cfg = default_config({})\n"
        "create_provider(ProviderSettings('local', cfg.providers['local'].type), None)\n"
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_local_answers_with_the_id_that_reaches_it() -> None:
    assert LocalProvider(ProviderSettings("mini", "local")).served_id == "mini/smollm2"
    custom = LocalProvider(ProviderSettings("local", "local", options={"model_id": "qwen"}))
    assert custom.served_id == "local/qwen"


# -- pricing: "free" is declared by the provider, not guessed from its name ----------------------------------


def test_free_providers_cost_nothing_unless_priced() -> None:
    pricing = Pricing({"mini/special": (1.0, 2.0)}, free_providers={"mini"})
    assert pricing.price("mini/smollm2") == (0.0, 0.0)
    assert pricing.price("mini/special") == (1.0, 2.0)  # a configured price wins
    assert pricing.price("local/smollm2") is None  # the name "local" means nothing by itself
    assert Pricing({}).price("groq/x") is None


async def test_runtime_passes_the_declared_free_providers(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "providers": {
                "mini": {"type": "local"},
                "groq": {"type": "openai", "base_url": "https://g.test", "api_keys": ["k"]},
            }
        },
        env={},
    )
    settings = Settings(data_dir=tmp_path, master_key="pw-test-master-key-0123456789")
    runtime = Runtime(settings, cfg)
    try:
        assert runtime.pricing.price("mini/smollm2") == (0.0, 0.0)
        assert runtime.pricing.price("groq/llama") is None
    finally:
        await runtime.aclose()


# -- the local model refuses what it cannot honour ----------------------------------------------------------
# (tools, tool_choice and JSON schemas are honoured through grammars: tests/unit/test_local_structured.py)


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"functions": [TOOL["function"]]}, "functions", "unsupported_parameter"),
        ({"function_call": {"name": "f"}}, "function_call", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "validation_error"),  # without tools
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice.function", "validation_error"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"minimum": 1}}}},
         "response_format.json_schema.schema", "unsupported_parameter"),
        ({"response_format": {"type": "yaml"}}, "response_format", "validation_error"),
        ({"tools": [TOOL], "stop": "x"}, "stop", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),  # unless options.logprobs
        ({"top_logprobs": 2}, "top_logprobs", "validation_error"),  # needs logprobs: true
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
    ],
)  # fmt: skip
def test_unhonoured_parameter_is_a_400_naming_it(extra: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(UpstreamFailure) as failure:
        build_request({"messages": MESSAGES, **extra}, 256)
    assert failure.value.kind is FailureKind.BAD_REQUEST and failure.value.status == 400
    assert failure.value.param == param and failure.value.error_code == code


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [], "tool_choice": "none"},
        {"tools": [TOOL], "tool_choice": "none"},
        {"tool_choice": "auto", "parallel_tool_calls": False},
        {"logprobs": False, "logit_bias": {}},
        {"response_format": {"type": "text"}},
        {"user": "u-1", "metadata": {"a": "b"}},
    ],
)
def test_parameters_that_change_nothing_pass(extra: dict[str, Any]) -> None:
    request = build_request({"messages": MESSAGES, **extra}, 256)
    assert request.plan is None and "grammar" not in request.sampling


def test_tools_and_json_output_make_a_plan() -> None:
    request = build_request({"messages": MESSAGES, "response_format": {"type": "json_object"}}, 256)
    assert request.plan is not None and request.plan.schema == {"type": "object"}
    request = build_request({"messages": MESSAGES, "tools": [TOOL], "tool_choice": "required"}, 256)
    assert request.plan is not None and request.plan.must_call and request.plan.tool_names == {"f"}
