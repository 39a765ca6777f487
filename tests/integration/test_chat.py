"""The OpenAI SDK against a real portway process in front of the real fake upstream."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.fakes.upstream import FakeUpstream
from tests.integration.server import PortwayProcess

# One client for the module's one-off requests (no connection kept between them, as with httpx.get):
# httpx.get() builds a client per call, and with it a TLS context that loads the CA bundle (~25 ms of CPU).
HTTP = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there gateway"}]


def test_non_stream_identical_to_direct(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    via = client.chat.completions.with_raw_response.create(model="direct", messages=MSGS, temperature=0.2)
    straight = direct.chat.completions.create(model="fake-model", messages=MSGS, temperature=0.2)
    assert via.parse().model_dump() == straight.model_dump()
    assert via.parse().choices[0].message.content == "Echo: hello there gateway"
    assert via.headers["x-portway-provider"] == "up" and via.headers["x-portway-model"] == "fake-model"


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_chunks_identical_to_direct(
    client: openai.OpenAI, direct: openai.OpenAI, include_usage: bool
) -> None:
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    via = [
        c.model_dump()
        for c in client.chat.completions.create(model="direct", messages=MSGS, stream=True, **extra)
    ]
    straight = [
        c.model_dump()
        for c in direct.chat.completions.create(model="fake-model", messages=MSGS, stream=True, **extra)
    ]
    assert via == straight
    assert len(via) >= 4
    assert (via[-1]["usage"] is not None) is include_usage


def test_stream_bytes_identical_and_end_with_done(gateway: PortwayProcess, upstream: FakeUpstream) -> None:
    body = {"model": "direct", "messages": MSGS, "stream": True}
    via = HTTP.post(gateway.base_url + "/chat/completions", json=body, headers=gateway.headers()).content
    body["model"] = "fake-model"
    straight = HTTP.post(
        upstream.base_url + "/chat/completions", json=body, headers={"x-api-key": "k"}
    ).content
    assert via == straight
    assert via.endswith(b"data: [DONE]\n\n")


def test_parameters_pass_through(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    client.chat.completions.create(
        model="direct",
        messages=MSGS,
        temperature=0.5,
        max_tokens=7,
        max_completion_tokens=7,
        top_p=0.9,
        stop=["x"],
        n=1,
        seed=42,
        tools=tools,
        tool_choice="auto",
        response_format={"type": "text"},
        user="u-1",
        extra_body={"custom_param": {"a": 1}},
    )
    sent = upstream.requests[-1].body
    assert sent is not None
    for k, v in {
        "temperature": 0.5,
        "max_tokens": 7,
        "max_completion_tokens": 7,
        "top_p": 0.9,
        "stop": ["x"],
        "n": 1,
        "seed": 42,
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "text"},
        "user": "u-1",
        "custom_param": {"a": 1},
    }.items():
        assert sent[k] == v, k
    assert sent["model"] == "fake-model" and "models" not in sent
    assert upstream.requests[-1].key == "k-main"


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "direct" in ids and "chain" in ids and "up/fake-model" in ids
    assert "ghost" in ids  # the alias exists; its provider has no key
    assert not any(i.startswith("nokey/") for i in ids)
    assert client.models.retrieve("up2/fake-model").id == "up2/fake-model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=MSGS)
    assert err.value.code == "model_not_found"


def test_direct_provider_model(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    out = client.chat.completions.create(model="up2/some/nested-model", messages=MSGS)
    assert out.model == "some/nested-model"  # split at the first "/"
    assert upstream.requests[-1].key == "k-second"


def test_alias_whose_provider_has_no_key_is_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="ghost", messages=MSGS)
    assert err.value.status_code == 503


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_bad_or_missing_key_is_401(gateway: PortwayProcess, key: str | None) -> None:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    r = HTTP.post(
        gateway.base_url + "/chat/completions", json={"model": "direct", "messages": MSGS}, headers=headers
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=gateway.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_x_api_key_header_accepted(gateway: PortwayProcess) -> None:
    r = HTTP.get(gateway.base_url + "/models", headers={"x-api-key": gateway.master_key or ""})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "direct", "messages": "hi"}', "messages"),
        (b'{"model": "direct", "messages": [{"content": "x"}]}', "messages[0].role"),
        (
            b'{"model": "direct", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}',
            "max_tokens",
        ),
        (b'{"model": "direct", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (
            b'{"model": "direct", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            "temperature",
        ),
    ],
)
def test_malformed_body_is_400_validation_error(
    gateway: PortwayProcess, body: bytes, param: str | None
) -> None:
    r = HTTP.post(
        gateway.base_url + "/chat/completions",
        content=body,
        headers={**gateway.headers(), "content-type": "application/json"},
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "validation_error" and err["type"] == "invalid_request_error"
    assert err["param"] == param
    if param:
        assert param in err["message"]


def test_oversized_body_is_413(gateway: PortwayProcess) -> None:
    big = {"model": "direct", "messages": [{"role": "user", "content": "x" * 70_000}]}
    r = HTTP.post(gateway.base_url + "/chat/completions", json=big, headers=gateway.headers())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_unknown_path_and_method_have_openai_error_shape(gateway: PortwayProcess) -> None:
    r = HTTP.get(gateway.url + "/v1/nothing-here", headers=gateway.headers())
    assert r.status_code == 404 and r.json()["error"]["type"]
    r = HTTP.get(gateway.base_url + "/chat/completions", headers=gateway.headers())
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_health_ready_docs(gateway: PortwayProcess) -> None:
    assert HTTP.get(gateway.url + "/health").json()["status"] == "healthy"
    ready = HTTP.get(gateway.url + "/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert HTTP.get(gateway.url + "/docs").status_code == 200
    assert "/v1/chat/completions" in HTTP.get(gateway.url + "/openapi.json").json()["paths"]


def test_cors_is_explicit(
    upstream: FakeUpstream, gateway: PortwayProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.integration.conftest import gateway_config

    body = {"model": "direct", "messages": MSGS}
    origin = {"Origin": "https://app.example"}
    plain = HTTP.post(
        gateway.base_url + "/chat/completions", json=body, headers={**gateway.headers(), **origin}
    )
    assert "access-control-allow-origin" not in plain.headers  # no origins configured: no CORS at all
    cfg = gateway_config(upstream)
    cfg["server"]["cors_origins"] = ["https://app.example"]
    gw = PortwayProcess(tmp_path_factory.mktemp("cors"), cfg)
    try:
        pre = httpx.options(
            gw.base_url + "/chat/completions",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        r = HTTP.post(gw.base_url + "/chat/completions", json=body, headers={**gw.headers(), **origin})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-portway-provider" in r.headers["access-control-expose-headers"]
        other = HTTP.get(gw.base_url + "/models", headers={**gw.headers(), "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        gw.stop()
