"""Seed 004 (AI API Server) served by portway: its curl examples, its Python CLI client and its bash
terminal client, run as written against a real portway process (fake OpenAI-compatible upstream), with
`compat.keyserver` enabled. Also: cheppu under a prefix with `auth: key`, and the shared /health."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests

from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

ADMIN_SECRET = "test-admin-secret"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def config(up: FakeUpstream) -> dict[str, Any]:
    return {
        "providers": {"up": {"type": "openai", "base_url": up.base_url, "api_keys": ["k-main"]}},
        "models": {"fast": ["up/llama3-70b"], "tiny": ["up/tinyllama"]},
        "compat": {
            "keyserver": {
                "enabled": True,
                "chat_model": "fast",
                "local_model": "tiny",
                "rotation_days": 7,
                "admin_secret": "${KS_ADMIN_SECRET}",
            },
            "cheppu": {"enabled": True, "prefix": "/cheppu", "chat_fallbacks": ["fast"]},
        },
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PortwayProcess]:
    env = {"KS_ADMIN_SECRET": ADMIN_SECRET}
    proc = PortwayProcess(tmp_path_factory.mktemp("keyserver"), config(upstream), env=env)
    yield proc
    proc.stop()


def current_key(gw: PortwayProcess) -> str:
    resp = HTTP.get(gw.url + "/current-key", headers={"admin-secret": ADMIN_SECRET})
    assert resp.status_code == 200
    key: str = resp.json()["api_key"]
    return key


def test_current_key(gw: PortwayProcess) -> None:
    # curl -X GET https://your-render-app.onrender.com/current-key -H "admin-secret: YOUR_ADMIN_SECRET"
    resp = HTTP.get(gw.url + "/current-key", headers={"admin-secret": ADMIN_SECRET})
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"api_key", "expiry"} and body["api_key"].startswith("sk-")
    assert ISO.match(body["expiry"]) and resp.headers["cache-control"] == "no-store"
    assert current_key(gw) == body["api_key"]  # one key at a time


@pytest.mark.parametrize("headers", [{}, {"admin-secret": "wrong"}, {"admin-secret": ADMIN_SECRET + "x"}])
def test_current_key_needs_the_admin_secret(gw: PortwayProcess, headers: dict[str, str]) -> None:
    resp = HTTP.get(gw.url + "/current-key", headers=headers)
    assert resp.status_code == 401 and resp.json() == {"detail": "Invalid admin secret"}
    assert ADMIN_SECRET not in resp.text


@pytest.mark.parametrize(("path", "model"), [("/chat", "llama3-70b"), ("/local-chat", "tinyllama")])
def test_curl_chat(gw: PortwayProcess, upstream: FakeUpstream, path: str, model: str) -> None:
    key = current_key(gw)
    resp = HTTP.post(
        gw.url + path,
        headers={"x-api-key": key, "Content-Type": "application/json"},
        content=b'{"prompt": "Hello, how are you?"}',
    )
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["object"] == "chat.completion" and isinstance(body["id"], str)
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Echo: Hello, how are you?"}
    assert upstream.requests[-1].model == model


def test_the_seeds_python_client(gw: PortwayProcess) -> None:
    """The seed's "CLI Client Example", as written (requests), with its two constants set."""
    API_URL = gw.url
    ADMIN_SECRET_ = ADMIN_SECRET

    def get_current_key() -> str:
        response = requests.get(f"{API_URL}/current-key", headers={"admin-secret": ADMIN_SECRET_})
        return str(response.json()["api_key"])

    def chat(prompt: str, api_key: str) -> str:
        response = requests.post(
            f"{API_URL}/chat",
            headers={"x-api-key": api_key, "Content-Type": "application/json"},
            json={"prompt": prompt},
        )
        data = response.json()
        return str(data["choices"][0]["message"]["content"])

    api_key = get_current_key()
    assert chat("Tell me a joke", api_key) == "Echo: Tell me a joke"


BASH_CLIENT = r"""#!/bin/bash

API_URL="%(url)s"
ADMIN_SECRET="%(secret)s"

# Get current API key
API_KEY=$(curl -s -X GET "$API_URL/current-key" -H "admin-secret: $ADMIN_SECRET" | jq -r '.api_key')

echo "AI Chat Client. Type 'quit' to exit."
while true; do
    read -p "You: " prompt
    if [ "$prompt" = "quit" ]; then
        break
    fi
    response=$(curl -s -X POST "$API_URL/chat" \
        -H "x-api-key: $API_KEY" \
        -H "Content-Type: application/json" \
        -d "{\"prompt\": \"$prompt\"}")
    echo "AI: $(echo $response | jq -r '.choices[0].message.content')"
done
"""


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="the seed's client needs curl and jq"
)
def test_the_seeds_bash_client(gw: PortwayProcess) -> None:
    script = BASH_CLIENT % {"url": gw.url, "secret": ADMIN_SECRET}
    done = subprocess.run(
        ["bash", "-c", script], input="Tell me a joke\nquit\n", capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["AI Chat Client. Type 'quit' to exit.", "AI: Echo: Tell me a joke"]


def _chat(gw: PortwayProcess, key: str) -> httpx.Response:
    return HTTP.post(gw.url + "/chat", headers={"x-api-key": key}, json={"prompt": "Hi"})


def test_only_the_rotating_key_is_accepted(gw: PortwayProcess) -> None:
    for key in ("", "sk-xxxxxxxxxxxxxxxx", gw.master_key or ""):
        resp = _chat(gw, key)
        assert resp.status_code == 401 and isinstance(resp.json()["detail"], str)


def test_a_prompt_is_required(gw: PortwayProcess) -> None:
    key = current_key(gw)
    for body in ({}, {"prompt": ""}, {"prompt": 3}):
        resp = HTTP.post(gw.url + "/chat", headers={"x-api-key": key}, json=body)
        assert resp.status_code == 400 and "prompt" in resp.json()["detail"]


def test_the_previous_key_gets_401_after_rotation(gw: PortwayProcess) -> None:
    old = current_key(gw)
    assert _chat(gw, old).status_code == 200
    admin = {"Authorization": f"Bearer {gw.master_key}"}
    rotated = HTTP.post(gw.url + "/admin/key-policies/compat-keyserver/rotate", headers=admin)
    assert rotated.status_code == 200, rotated.text
    new = current_key(gw)
    assert new != old
    resp = _chat(gw, old)
    assert resp.status_code == 401 and isinstance(resp.json()["detail"], str)
    assert _chat(gw, new).status_code == 200


def test_the_policy_rotates_every_rotation_days(gw: PortwayProcess) -> None:
    admin = {"Authorization": f"Bearer {gw.master_key}"}
    resp = HTTP.get(gw.url + "/admin/key-policies", headers=admin)
    assert resp.status_code == 200
    policies = resp.json()["data"]
    policy = next(p for p in policies if p["name"] == "compat-keyserver")
    assert policy["period_seconds"] == 7 * 86_400 and policy["grace_seconds"] == 0


def test_health_carries_every_seed_field(gw: PortwayProcess) -> None:
    body = HTTP.get(gw.url + "/health").json()
    assert body["status"] == "healthy" and ISO.match(body["timestamp"])
    assert body["service"] == "portway" and isinstance(body["version"], str)


def test_cheppu_under_a_prefix_with_auth_key(gw: PortwayProcess) -> None:
    body = {"type": "chat", "model": "fast", "messages": [{"role": "user", "content": "Hello"}]}
    resp = HTTP.post(gw.url + "/cheppu/", json=body)
    assert resp.status_code == 401 and isinstance(resp.json()["error"], str)
    resp = HTTP.post(gw.url + "/cheppu/", json=body, headers={"x-api-key": gw.master_key or ""})
    assert resp.status_code == 200 and resp.json()["used_model"] == "llama3-70b"
    assert HTTP.get(gw.url + "/cheppu/").json()["status"] == "running"
    missing = HTTP.get(gw.url + "/cheppu/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "Not found"}
    assert HTTP.post(gw.url + "/", json=body).status_code in (404, 405)  # nothing at the root
