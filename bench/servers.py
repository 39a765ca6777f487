"""The servers under test, each built from its config: nginx upstream + proxy, forwarder, portway, LiteLLM."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

from bench import canned
from bench.deps import ECHO_MODULE
from bench.procs import Server, free_port
from bench.upload import canned_transcription

NGINX_DIR = Path(__file__).resolve().parent / "nginx"
ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
UPSTREAM_KEY = "sk-upstream-bench"
MASTER_KEY = "sk-pw-bench-master-0123456789abcdef"
LITELLM_KEY = "sk-litellm-bench"
PRICE = {"input": 0.1, "output": 0.2, "audio_minute": 0.006}


def _render(template: str, out: Path, **values: object) -> Path:
    text = Template((NGINX_DIR / template).read_text()).substitute({k: str(v) for k, v in values.items()})
    out.write_text(text)
    return out


def nginx_servers(tmp: Path) -> tuple[Server, Server, int, int]:
    """(upstream, proxy, upstream_port, proxy_port), not started."""
    prefix = tmp / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    up_port, proxy_port = free_port(), free_port()
    up_conf = _render(
        "upstream.conf",
        prefix / "upstream.conf",
        PREFIX=prefix,
        ECHO_MODULE=ECHO_MODULE,
        UPSTREAM_PORT=up_port,
        COMPLETION=canned.nginx_quote(canned.completion()),
        STREAM_DIRECTIVES=canned.stream_directives(),
        SLOW_SECONDS=canned.SLOW_SECONDS,
        TRANSCRIPTION=canned.nginx_quote(canned_transcription()),
    )
    proxy_conf = _render(
        "proxy.conf", prefix / "proxy.conf", PREFIX=prefix, UPSTREAM_PORT=up_port, PROXY_PORT=proxy_port
    )

    def server(name: str, conf: Path, port: int) -> Server:
        argv = ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / f"{name}-error.log")]
        return Server(name, argv, tmp / f"{name}.log", f"http://127.0.0.1:{port}/health")

    return (
        server("nginx-upstream", up_conf, up_port),
        server("nginx-proxy", proxy_conf, proxy_port),
        up_port,
        proxy_port,
    )


def forwarder(tmp: Path, upstream_port: int) -> tuple[Server, int]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.forwarder", "--port", str(port)]
    argv += ["--upstream", f"http://127.0.0.1:{upstream_port}"]
    return Server("forwarder", argv, tmp / "forwarder.log", f"http://127.0.0.1:{port}/health", cwd=ROOT), port


def floor(tmp: Path) -> tuple[Server, int]:
    """uvicorn answering by itself (bench/floor.py): what the Python server stack costs with no hop."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor", "--port", str(port)]
    return Server("floor", argv, tmp / "floor.log", f"http://127.0.0.1:{port}/health", cwd=ROOT), port


def portway_config(upstream_port: int, *, max_in_flight: int = 2048, local: bool = False) -> dict[str, Any]:
    """gateway.yaml: three providers on the nginx upstream (canned, paced stream, slow) with prices."""
    if local:
        return {"providers": {"local": {"type": "local"}}}
    base = f"http://127.0.0.1:{upstream_port}"
    providers = {
        name: {"type": "openai", "base_url": base + path, "api_keys": [UPSTREAM_KEY]}
        for name, path in (("bench", "/v1"), ("benchstream", "/stream/v1"), ("benchslow", "/slow/v1"))
    }
    return {
        "server": {"max_in_flight": max_in_flight},
        "pricing": {f"{name}/*": PRICE for name in providers},
        "providers": providers,
        "models": {},
    }


@dataclass
class Portway:
    server: Server
    port: int
    url: str


def portway(
    tmp: Path, name: str, cfg: dict[str, Any], *, workers: int = 1, env: dict[str, str] | None = None
) -> Portway:
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    config = home / "gateway.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    extra = env or {}
    env = {
        **os.environ,
        "PORTWAY_DATA_DIR": str(home / "data"),
        "PORTWAY_MASTER_KEY": MASTER_KEY,
        "PORTWAY_LOG_LEVEL": "warning",
    }
    for var in (
        "PORTWAY_CONFIG",
        "PORTWAY_DATABASE_URL",
        "PORTWAY_REDIS_URL",
        "PORTWAY_HOST",
        "PORTWAY_PORT",
    ):
        env.pop(var, None)
    env.update(extra)
    argv = [str(VENV_BIN / "portway"), "serve", "--config", str(config), "--port", str(port)]
    argv += ["--workers", str(workers)]
    srv = Server(name, argv, tmp / f"{name}.log", f"http://127.0.0.1:{port}/health", env=env, cwd=home)
    return Portway(srv, port, f"http://127.0.0.1:{port}")


def virtual_key(base_url: str, *, limits: bool = True) -> tuple[str, str]:
    """(bearer token, label): a virtual key with huge limits via POST /admin/keys, else the master key."""
    body: dict[str, Any] = {"name": "bench"}
    if limits:
        body |= {"rpm": 100000000, "tpm": 1000000000, "daily_requests": 1000000000, "budget_usd": 1000000}
    req = urllib.request.Request(
        base_url + "/admin/keys",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {MASTER_KEY}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            key = json.loads(resp.read()).get("key")
        if isinstance(key, str) and key:
            return key, "virtual key (rpm/tpm/daily/budget limits checked, usage + cost recorded)"
        reason = "no 'key' in the answer"
    except urllib.error.HTTPError as exc:
        reason = f"POST /admin/keys -> {exc.code}"
    except (OSError, ValueError) as exc:
        reason = f"POST /admin/keys failed: {exc}"
    return MASTER_KEY, f"master key (virtual keys unavailable: {reason}; usage + cost recorded, no limits)"


def litellm(tmp: Path, exe: str, upstream_port: int, workers: int = 2) -> tuple[Server, int]:
    base = f"http://127.0.0.1:{upstream_port}"
    models = [
        {
            "model_name": f"{name}/canned",
            "litellm_params": {
                "model": f"openai/{canned.MODEL}",
                "api_base": base + path,
                "api_key": UPSTREAM_KEY,
            },
        }
        for name, path in (("bench", "/v1"), ("benchstream", "/stream/v1"))
    ]
    cfg = {"model_list": models, "general_settings": {"master_key": LITELLM_KEY}}
    home = tmp / "litellm"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map from the internet
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    argv = [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", str(workers)]
    health = f"http://127.0.0.1:{port}/health/liveliness"
    return Server("litellm", argv, tmp / "litellm.log", health, env=env, cwd=home), port
