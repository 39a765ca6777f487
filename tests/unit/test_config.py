from __future__ import annotations

from pathlib import Path

import pytest

from portway.config import default_config, load_config, parse_config
from portway.errors import ConfigError, ModelNotFound
from portway.routing.router import Router, Target


def test_env_interpolation_and_default_values() -> None:
    cfg = parse_config(
        {
            "providers": {
                "groq": {
                    "type": "openai",
                    "base_url": "${BASE:-https://x.test/v1/}",
                    "api_keys": ["${K1}", "${K2}"],
                },
            },
            "models": {"fast": ["groq/llama-3.1-8b-instant"]},
        },
        env={"K1": "a"},
    )
    groq = cfg.providers["groq"]
    assert groq.base_url == "https://x.test/v1" and groq.api_keys == ["a"]  # unset ${K2} is not a key


def test_provider_without_keys_is_disabled_and_its_targets_skipped() -> None:
    cfg = parse_config(
        {
            "providers": {
                "or": {"type": "openai", "base_url": "https://o.test", "api_keys": ["${NOPE}"]},
                "local": {"type": "local"},
            },
            "models": {"smart": ["or/m", "local/smollm2"]},
        },
        env={},
    )
    assert list(cfg.enabled_providers()) == ["local"]
    assert Router(cfg).resolve("smart") == (Target("local", "smollm2"),)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"providers": {"x": {"type": "openai"}}}, "providers.x: Value error, base_url is required"),
        ({"providers": {"x": {"type": "nope"}}}, "providers.x.type"),
        ({"providers": {"x": {"type": "local"}}, "models": {"a": ["y/m"]}}, "unknown provider 'y'"),
        (
            {"providers": {"x": {"type": "local"}}, "models": {"a": ["nomodel"]}},
            "must look like provider/model",
        ),
        ({"routing": {"deadline": -1}}, "routing.deadline"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"providers": {"x": {"type": "openai", "base_url": "ftp://h"}}}, "must start with http"),
    ],
)
def test_invalid_config_names_the_setting(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "gateway.yaml", env={})
    assert message in str(err.value) and "gateway.yaml" in str(err.value)


def test_unknown_provider_type_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"providers": {"x": {"type": "opnai"}}}, "gateway.yaml", env={})
    assert "providers.x.type" in str(err.value)
    assert "known types: anthropic, gemini, huggingface, local, openai" in str(err.value)


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        (
            {"type": "local", "options": {"n_ctx": "big"}},
            "providers.x.options.n_ctx: Input should be a valid",
        ),
        ({"type": "local", "options": {"n_ctxx": 4096}}, "providers.x.options.n_ctxx: Extra inputs"),
        ({"type": "local", "options": {"n_ctx": 0}}, "providers.x.options.n_ctx: Input should be greater"),
        ({"type": "local", "options": {"max_concurrency": True}}, "providers.x.options.max_concurrency"),
        ({"type": "local", "options": {"max_tokens": 4096}}, "max_tokens (4096) cannot exceed n_ctx (2048)"),
        ({"type": "local", "options": {"model_id": ""}}, "providers.x.options.model_id"),
        (
            {"type": "openai", "base_url": "https://o.test", "options": {"n_ctx": 1}},
            "providers.x.options.n_ctx: Extra inputs",
        ),
    ],
)
def test_provider_options_are_checked_at_load(provider: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"providers": {"x": provider}}, "gateway.yaml", env={})
    assert message in str(err.value)


def test_provider_options_from_env_are_coerced_and_null_is_the_default() -> None:
    raw = {"providers": {"x": {"type": "local", "options": {"n_ctx": "${N_CTX}", "max_tokens": None}}}}
    cfg = parse_config(raw, env={"N_CTX": "4096"})
    assert cfg.providers["x"].options == {"n_ctx": 4096}


def test_provider_facts_come_from_the_provider_class() -> None:
    cfg = parse_config(
        {
            "providers": {
                "hf": {"type": "huggingface"},  # default base_url, needs a key
                "mini": {"type": "local"},  # keyless, no base_url
            }
        },
        env={},
    )
    assert cfg.providers["hf"].base_url == "https://router.huggingface.co/v1"
    assert list(cfg.enabled_providers()) == ["mini"]


def test_yaml_errors_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "g.yaml"
    bad.write_text("providers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def test_defaults_without_keys_serve_the_local_model() -> None:
    cfg = default_config({})
    assert list(cfg.enabled_providers()) == ["local"]
    assert {t: cfg.models[t] for t in ("fast", "balanced", "smart")} == {
        t: ["local/smollm2"] for t in ("fast", "balanced", "smart")
    }
    assert cfg.models["text-embedding-3-small"] == ["local/all-minilm-l6-v2"]
    assert cfg.models["tts-1"] == ["local/piper-joe"] and cfg.models["whisper-1"] == ["local/whisper-tiny.en"]


def test_defaults_enable_a_provider_per_env_key() -> None:
    cfg = default_config({"GROQ_API_KEY": "g1,g2", "OPENROUTER_API_KEY": "o", "HF_TOKEN": "h"})
    assert cfg.providers["groq"].api_keys == ["g1", "g2"]
    assert cfg.models["fast"][0] == "groq/llama-3.1-8b-instant"
    assert cfg.models["smart"][0] == "openrouter/anthropic/claude-3.5-sonnet"
    assert all(cfg.models[t][-1] == "local/smollm2" for t in ("fast", "balanced", "smart"))
    assert cfg.models["whisper-1"] == ["groq/whisper-large-v3", "local/whisper-tiny.en"]
    assert cfg.providers["hf"].base_url == "https://router.huggingface.co/v1"


def test_router_plan_dedupes_and_rejects_unknown() -> None:
    cfg = default_config({"GROQ_API_KEY": "g"})
    router = Router(cfg)
    plan = router.plan("fast", ["balanced", "local/smollm2"])
    assert plan == [
        Target("groq", "llama-3.1-8b-instant"),
        Target("local", "smollm2"),
        Target("groq", "llama-3.3-70b-versatile"),
    ]
    with pytest.raises(ModelNotFound):
        router.plan("gpt-9")
    with pytest.raises(ModelNotFound):
        router.plan("fast", ["openai/gpt-4o"])  # provider not enabled


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "gateway.example.yaml"
    cfg = load_config(example, env={"GROQ_API_KEY": "g"})
    assert cfg.models["fast"] == ["groq/llama-3.1-8b-instant", "local/smollm2"]
    assert set(cfg.enabled_providers()) == {"groq", "ollama", "local"}


def test_schema_revision_constant_is_alembic_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from portway.stores.sql.database import MIGRATIONS_DIR
    from portway.stores.sql.tables import SCHEMA_REVISION

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_REVISION
