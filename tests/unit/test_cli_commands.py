"""The CLI without a server: argument handling, exit codes, key discovery, and the config commands."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from portway.cli import app
from portway.cli.client import Server, _deltas, resolve_key
from portway.cli.common import CliError
from portway.cli.usage import bar
from portway.config import load_config
from tests.integration.server import free_port


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PORTWAY_API_KEY", "PORTWAY_MASTER_KEY", "PORTWAY_URL", "PORTWAY_CONFIG", "GROQ_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("OPENROUTER_API_KEY", "OPENAI_API_KEY", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PORTWAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


# -- exit codes and one-line errors ------------------------------------------------------------------


def test_an_unreachable_server_is_exit_3_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = run("keys", "list", "--url", url, "--key", "sk-pw-x")
    assert code == 3 and out == ""
    assert err.splitlines() == [
        f"portway: cannot reach the server at {url} (connection failed): is `portway serve` running? "
        "(set --url or PORTWAY_URL)"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["usage", "--by", "week", "--api-key", "k"],  # not a grouping
        ["keys", "update", "key_1", "--key", "k"],  # nothing to change
        ["keys", "create", "--metadata", "[1]", "--key", "k"],  # not an object
        ["chat", "hi", "--url", "ftp://host", "--key", "k"],
        ["keys"],  # a group alone: its help
        ["models", "--no-such-option"],
    ],
)
def test_usage_errors_are_exit_2(args: list[str]) -> None:
    code, _, err = run(*args)
    assert code == 2
    assert "Traceback" not in err


def test_no_key_anywhere_is_a_usage_error() -> None:
    code, _, err = run("keys", "list", "--url", "http://127.0.0.1:9")
    assert code == 2
    assert err.startswith("portway: no API key: pass --key") and len(err.splitlines()) == 1


def test_the_key_comes_from_the_option_then_the_env_then_master_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_key(None) is None
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "master.key").write_text("sk-pw-master-from-file\n")
    assert resolve_key(None) == "sk-pw-master-from-file"
    monkeypatch.setenv("PORTWAY_MASTER_KEY", "sk-pw-master-env")
    assert resolve_key(None) == "sk-pw-master-env"
    assert resolve_key("sk-pw-given") == "sk-pw-given"
    # PORTWAY_API_KEY reaches the command as its --key value (Typer reads it).
    monkeypatch.setenv("PORTWAY_API_KEY", "sk-pw-api-env")
    seen: list[str | None] = []
    monkeypatch.setattr(Server, "get", lambda self, path, **params: seen.append(self.key) or {"data": []})
    assert run("models")[0] == 0
    assert seen == ["sk-pw-api-env"]


def test_a_broken_stream_is_a_refusal() -> None:
    lines = iter(
        ['data: {"choices":[{"delta":{"content":"Hi"}}]}', 'data: {"error":{"code":"upstream_error"}}']
    )
    got = _deltas(lines)
    assert next(got) == "Hi"
    with pytest.raises(CliError) as info:
        next(got)
    assert info.value.exit_code == 1 and "upstream_error" in str(info.value)


def test_bars_scale_to_the_largest() -> None:
    assert bar(10, 10, width=4) == "████"
    assert bar(5, 10, width=4) == "██"
    assert bar(1, 16, width=2) == "▏"  # an eighth: small but visible
    assert bar(0, 10) == "" and bar(3, 0) == ""


# -- config validate, show, get, set; init ------------------------------------------------------------

GOOD = """\
# the team's gateway
routing:
  deadline: 30   # seconds, all attempts together
providers:
  groq:
    type: openai
    base_url: https://api.groq.com/openai/v1
    api_keys: ["${GROQ_API_KEY}"]   # from the environment
    headers: {Authorization: Bearer header-secret-value-1234}
models:
  fast: [groq/llama-3.1-8b-instant]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_validate_lists_every_error_with_its_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "routing: {deadline: -1, retries: many}\nserver: {no_such: 1}\nproviders: {p: {type: nope}}\n",
    )
    code, out, _ = run("config", "validate", "--config", str(path))
    assert code == 2
    lines = out.splitlines()
    assert lines[0] == f"{path}: 4 errors"
    paths = [line.split(":")[0].strip() for line in lines[1:]]
    assert sorted(paths) == ["providers.p.type", "routing.deadline", "routing.retries", "server.no_such"]
    code, out, _ = run("config", "validate", "--config", str(path), "--json")
    report = orjson.loads(out)
    assert code == 2 and report["valid"] is False and len(report["errors"]) == 4


def test_validate_a_good_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-secret-value-abcd")
    _write(tmp_path, GOOD)
    code, out, _ = run("config", "validate")  # ./gateway.yaml, as serve finds it
    assert code == 0
    assert out.splitlines()[0] == "gateway.yaml: valid"
    assert "provider groq: type=openai keys=1 enabled" in out
    assert run("config")[1] == out  # `portway config` alone is validate


def test_show_and_get_mask_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-secret-value-abcd")
    _write(tmp_path, GOOD)
    code, out, _ = run("config", "show")
    assert code == 0
    assert "gsk-secret-value" not in out and "header-secret-value" not in out
    shown = yaml.safe_load(out)
    assert shown["providers"]["groq"]["api_keys"] == ["****abcd"]
    assert shown["providers"]["groq"]["headers"]["Authorization"] == "****1234"
    assert shown["routing"]["deadline"] == 30 and "attempt_timeout" in shown["routing"]  # defaults filled in
    assert run("config", "get", "routing.deadline") == (0, "30\n", "")
    assert run("config", "get", "providers.groq.api_keys.0")[1] == "****abcd\n"
    assert orjson.loads(run("config", "get", "models", "--json")[1]) == {
        "fast": ["groq/llama-3.1-8b-instant"]
    }
    code, _, err = run("config", "get", "routing.nope")
    assert code == 2 and "no setting 'routing.nope'" in err


def test_set_keeps_comments_and_env_references(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    assert run("config", "set", "routing.deadline", "45")[0] == 0
    assert run("config", "set", "providers.groq.api_keys", '["${GROQ_API_KEY}", "${GROQ_KEY_2}"]')[0] == 0
    assert run("config", "set", "limits.per_ip.rpm", "100")[0] == 0  # mappings made on the way
    text = path.read_text()
    assert "# the team's gateway" in text and "# seconds, all attempts together" in text
    assert "${GROQ_API_KEY}" in text and "${GROQ_KEY_2}" in text
    raw = yaml.safe_load(text)
    assert raw["routing"]["deadline"] == 45 and raw["limits"] == {"per_ip": {"rpm": 100}}
    cfg = load_config(path, env={"GROQ_API_KEY": "a", "GROQ_KEY_2": "b"})
    assert cfg.providers["groq"].api_keys == ["a", "b"]


def test_set_refuses_an_invalid_value_and_leaves_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    code, _, err = run("config", "set", "routing.deadline", "--", "-5")  # -- : a negative number is no option
    assert code == 2 and "routing.deadline" in err and "not written" in err
    assert path.read_text() == GOOD


def test_init_writes_a_commented_config_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", "gsk-secret-value-abcd")
    code, out, _ = run("init")
    assert code == 0 and "wrote gateway.yaml" in out
    text = (tmp_path / "gateway.yaml").read_text()
    assert "gsk-secret-value" not in text  # the variable, never its value
    assert '["${GROQ_API_KEY}"]' in text
    assert "# OPENROUTER_API_KEY is not set" in text
    cfg = load_config(tmp_path / "gateway.yaml", env={"GROQ_API_KEY": "gsk-secret-value-abcd"})
    assert set(cfg.providers) == {"groq", "local"}
    assert cfg.models["fast"] == ["groq/llama-3.1-8b-instant", "local/smollm2"]
    code, _, err = run("init")
    assert code == 2 and "exists" in err
    assert run("init", "--force")[0] == 0
