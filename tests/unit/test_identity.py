"""Identity building blocks: key format and hashing, sealing, JWT checks, passwords, limits, rotation math."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest

from portway.config import LimitFields, LimitSpecConfig
from portway.errors import ConfigError, InvalidApiKey
from portway.identity.auth import MASTER, Authenticator, Principal
from portway.identity.cache import TTLCache
from portway.identity.crypto import (
    KeyHasher,
    Sealer,
    derive_key,
    display_prefix,
    load_or_create_secret,
    new_api_key,
)
from portway.identity.jwt import JwtCodec, looks_like_jwt
from portway.identity.models import KeyCreate, KeyUpdate, PolicyCreate, UserCreate, UserUpdate
from portway.identity.rotation import is_due, key_valid_until, next_rotation_at, policy_json, sleep_for
from portway.identity.service import IdentityConfig
from portway.identity.users import Passwords
from portway.limits.policy import default_spec, limits_for
from portway.limits.spec import LIMIT_FIELDS, Limit, LimitKind, LimitSpec, limit_values
from portway.settings import Settings
from portway.stores.sql.identity import (
    KeyRow,
    LimitColumns,
    PolicyRow,
    UserRow,
    api_keys,
    key_policies,
    users,
)

SECRET = b"unit-test-jwt-secret-" + b"0123456789abcdef" * 3  # >= 64 bytes: HS512 would warn otherwise


def b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


# -- virtual keys ------------------------------------------------------------------------------------


def test_key_format_and_entropy() -> None:
    keys = {new_api_key() for _ in range(2000)}
    assert len(keys) == 2000
    for key in keys:
        assert key.startswith("sk-pw-")
        assert len(key) == len("sk-pw-") + 43  # 32 bytes in unpadded url-safe base64
        raw = base64.urlsafe_b64decode(key[6:] + "=")
        assert len(raw) * 8 >= 128
        assert "." not in key  # never mistaken for a JWT
    assert display_prefix("sk-pw-abcdefghij") == "sk-pw-abcd…"


def test_key_hash_is_hmac_with_the_server_secret() -> None:
    key = new_api_key()
    h = KeyHasher(b"secret-one").hash(key)
    assert h == KeyHasher(b"secret-one").hash(key)
    assert h != KeyHasher(b"secret-two").hash(key)
    assert h != hashlib.sha256(key.encode()).hexdigest()  # not a plain (unkeyed) hash
    expected = hmac.new(derive_key(b"secret-one", "virtual-key-hash/v1"), key.encode(), "sha256").hexdigest()
    assert h == expected and len(h) == 64
    assert key[6:] not in h


def test_sealer_round_trip_and_tamper_detection() -> None:
    sealer, key = Sealer(b"server-secret"), new_api_key()
    sealed = sealer.seal(key)
    assert key not in sealed and key[6:20] not in sealed
    assert sealer.seal(key) != sealed  # random nonce
    assert sealer.open(sealed) == key
    with pytest.raises(ValueError):
        Sealer(b"other-secret").open(sealed)
    blob = bytearray(base64.urlsafe_b64decode(sealed.split(".", 1)[1]))
    blob[20] ^= 1
    with pytest.raises(ValueError):
        sealer.open("pw1." + base64.urlsafe_b64encode(bytes(blob)).decode())
    with pytest.raises(ValueError):
        sealer.open("nope")


def test_secret_from_env_or_a_0600_file(tmp_path: Path) -> None:
    assert load_or_create_secret(tmp_path, "secret.key", "from-env") == b"from-env"
    assert not (tmp_path / "secret.key").exists()
    first = load_or_create_secret(tmp_path, "secret.key", None)
    assert len(first) >= 40
    assert stat.S_IMODE(os.stat(tmp_path / "secret.key").st_mode) == 0o600
    assert load_or_create_secret(tmp_path, "secret.key", None) == first


# -- JWT ---------------------------------------------------------------------------------------------


def test_jwt_valid_token() -> None:
    codec = JwtCodec(SECRET, 60)
    token = codec.issue("user_1", "a@b.c", is_admin=False)
    assert looks_like_jwt(token)
    claims = codec.decode(token)
    assert claims.user_id == "user_1" and claims.email == "a@b.c"
    assert claims.expires_at - claims.issued_at == 60


def _payload(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "user_1", "email": "a@b.c", "iat": now, "exp": now + 600, **extra}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: JwtCodec(SECRET, 60).issue("u", "e", is_admin=False, now=time.time() - 120), id="expired"
        ),
        pytest.param(
            lambda: jwt.encode(_payload(), b"another-secret-0123456789abcdef!", "HS256"), id="wrong-sig"
        ),
        pytest.param(lambda: f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(_payload())}.", id="alg-none"),
        pytest.param(lambda: jwt.encode(_payload(), SECRET, "HS512"), id="other-alg"),
        pytest.param(lambda: jwt.encode({"sub": "u", "iat": int(time.time())}, SECRET, "HS256"), id="no-exp"),
        pytest.param(
            lambda: jwt.encode({"exp": int(time.time()) + 60, "iat": 1}, SECRET, "HS256"), id="no-sub"
        ),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
    ],
)
def test_jwt_rejected(make: object) -> None:
    assert callable(make)
    with pytest.raises(InvalidApiKey):
        JwtCodec(SECRET).decode(make())


def test_jwt_tampered_payload_rejected() -> None:
    token = JwtCodec(SECRET).issue("user_1", "a@b.c", is_admin=False)
    header, _, sig = token.split(".")
    forged = f"{header}.{b64url(_payload(sub='user_admin', adm=True))}.{sig}"
    with pytest.raises(InvalidApiKey):
        JwtCodec(SECRET).decode(forged)


# -- passwords ---------------------------------------------------------------------------------------


async def test_argon2_passwords() -> None:
    pw = Passwords()
    hashed = await pw.hash("correct horse")
    assert hashed.startswith("$argon2id$") and "correct horse" not in hashed
    assert await pw.verify(hashed, "correct horse")
    assert not await pw.verify(hashed, "wrong horse")
    assert not await pw.verify(None, "anything")  # unknown user: dummy work, then no
    assert not await pw.verify("not-a-hash", "x")


# -- authenticator -----------------------------------------------------------------------------------


class FakeResolver:
    async def resolve_key(self, token: str) -> Principal:
        return Principal(f"key:{token[-3:]}", key_id=token[-3:])

    async def resolve_jwt(self, token: str) -> Principal:
        return Principal("user:u1", user_id="u1")


async def test_authenticator_dispatch() -> None:
    auth = Authenticator("sk-pw-master", FakeResolver())
    assert await auth.authenticate("sk-pw-master") is MASTER
    assert (await auth.authenticate("sk-pw-abc")).id == "key:abc"
    assert (await auth.authenticate("a.b.c")).id == "user:u1"
    for bad in (None, "", "nope", "one.dot"):
        with pytest.raises(InvalidApiKey):
            await auth.authenticate(bad)
    with pytest.raises(InvalidApiKey):
        await Authenticator("sk-pw-master").authenticate("sk-pw-abc")  # no resolver: master only


# -- limits ------------------------------------------------------------------------------------------


def test_limit_spec_to_limits() -> None:
    spec = LimitSpec(rpm=60, tpm=1000, daily_requests=500, budget_usd=2.5, budget_period="monthly")
    assert limits_for("key:k1", spec) == [
        Limit("key:k1", LimitKind.RPM, 60),
        Limit("key:k1", LimitKind.TPM, 1000),
        Limit("key:k1", LimitKind.DAILY_REQUESTS, 500),
        Limit("key:k1", LimitKind.BUDGET, 2.5, period="monthly"),
    ]
    assert limits_for("user:u", LimitSpec()) == []
    assert limits_for("user:u", None) == []
    assert limits_for("user:u", LimitSpec(rpm=0)) == [Limit("user:u", LimitKind.RPM, 0)]  # 0 is a limit
    # No limits of one's own is None, not an empty (and truthy) spec: that is what lets limits.per_user apply.
    assert LimitSpec.of(_limits(None, None, None, None, "total")) is None
    assert LimitSpec.of(_limits(None, None, 0, None, "total")) == LimitSpec(daily_requests=0)
    assert LimitSpec.of(_limits(None, None, None, 2.0, "daily")) == LimitSpec(
        budget_usd=2.0, budget_period="daily"
    )


def _limits(*values: object) -> SimpleNamespace:
    return SimpleNamespace(**dict(zip(LIMIT_FIELDS, values, strict=True)))


def test_the_five_limit_fields_are_declared_once() -> None:
    # Every carrier of limits agrees on the names: the value, the schema, the stored rows and the tables.
    assert LIMIT_FIELDS == ("rpm", "tpm", "daily_requests", "budget_usd", "budget_period")
    assert tuple(LimitFields.model_fields) == LIMIT_FIELDS
    for model in (LimitSpecConfig, KeyCreate, KeyUpdate, UserCreate, UserUpdate, PolicyCreate):
        assert set(LIMIT_FIELDS) <= set(model.model_fields), model
    assert tuple(f.name for f in fields(LimitColumns)) == LIMIT_FIELDS
    for row in (UserRow, KeyRow, PolicyRow):
        assert issubclass(row, LimitColumns)
    for table in (users, api_keys, key_policies):
        assert set(LIMIT_FIELDS) <= set(table.c.keys()), table.name
    # One reader and one renderer, whatever carries the fields.
    body = KeyCreate(rpm=5, budget_usd=1.5, budget_period="daily")
    assert LimitSpec.of(body) == LimitSpec(rpm=5, budget_usd=1.5, budget_period="daily")
    assert limit_values(body) == {
        "rpm": 5, "tpm": None, "daily_requests": None, "budget_usd": 1.5, "budget_period": "daily"
    }  # fmt: skip
    assert default_spec(LimitSpecConfig(tpm=10)) == LimitSpec(tpm=10)
    assert default_spec(LimitSpecConfig()) is None
    policy = _policy(100.0)
    assert {k: policy_json(policy)[k] for k in LIMIT_FIELDS} == limit_values(policy)


def test_limit_bounds_keys_may_block_config_defaults_may_not() -> None:
    # 0 on a key or user is a deliberate block; as a configured default it would refuse every client.
    assert KeyCreate(rpm=0).rpm == 0 and UserCreate(email="a@b.io", daily_requests=0).daily_requests == 0
    assert LimitSpecConfig(rpm=1).rpm == 1
    for count in ("rpm", "tpm", "daily_requests"):
        with pytest.raises(ValueError, match="greater than or equal to 1"):
            LimitSpecConfig.model_validate({count: 0})
        for model in (KeyCreate, KeyUpdate, LimitSpecConfig):
            with pytest.raises(ValueError):
                model.model_validate({count: 2**31})
            with pytest.raises(ValueError):
                model.model_validate({count: -1})
    for bad in (float("nan"), float("inf"), -0.01, 1e9 + 1):
        for model in (KeyCreate, KeyUpdate, LimitSpecConfig):
            with pytest.raises(ValueError):
                model.model_validate({"budget_usd": bad})
    with pytest.raises(ValueError):
        LimitSpecConfig.model_validate({"budget_period": "weekly"})


# -- rotation schedule -------------------------------------------------------------------------------


def _policy(next_at: float, grace: float = 0.0) -> PolicyRow:
    return PolicyRow(
        id="pol_1", name="p", period_seconds=10.0, grace_seconds=grace, current_key_id="key_1",
        previous_key_id=None, rotated_at=next_at - 10, next_rotation_at=next_at, sealed_key="sealed",
        allowed_models=None, rpm=None, tpm=None, daily_requests=None, budget_usd=None,
        budget_period="total", created_at=0.0,
    )  # fmt: skip


def test_rotation_schedule_math() -> None:
    assert next_rotation_at(1000.0, 7 * 86400) == 1000.0 + 604800
    assert is_due(_policy(100.0), 100.0) and not is_due(_policy(100.0), 99.9)
    assert sleep_for([], 0.0, 30.0) == 30.0
    assert sleep_for([_policy(105.0), _policy(102.0)], 100.0, 30.0) == pytest.approx(2.0)
    assert sleep_for([_policy(50.0)], 100.0, 30.0) == 0.0  # overdue: rotate now
    assert sleep_for([_policy(1000.0)], 100.0, 30.0) == 30.0  # capped: picks up new policies
    assert key_valid_until(_policy(100.0, grace=5.0)) == 105.0
    assert PolicyCreate(name="p", period_days=0.5).period() == 43200
    assert PolicyCreate(name="p").period() == 7 * 86400
    assert PolicyCreate(name="p", period_seconds=2).period() == 2
    with pytest.raises(ValueError):
        PolicyCreate(name="p", period_seconds=0.1)


# -- inputs, config, cache ---------------------------------------------------------------------------


def test_inputs_are_strict() -> None:
    with pytest.raises(ValueError):
        KeyCreate.model_validate({"name": "x", "unknown": 1})
    with pytest.raises(ValueError):
        KeyCreate.model_validate({"expires_at": "2030-01-01T00:00:00Z", "expires_in_seconds": 5})
    with pytest.raises(ValueError):
        KeyCreate.model_validate({"budget_period": "weekly"})
    assert UserCreate(email="  Ann@Example.COM ").email == "ann@example.com"
    with pytest.raises(ValueError):
        UserCreate(email="not-an-email")
    with pytest.raises(ValueError):
        UserUpdate.model_validate({"email": None})
    assert UserUpdate.model_validate({"rpm": None}).changes() == {"rpm": None}


def test_identity_config_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the real environment: works whether Settings declares these fields or not.
    monkeypatch.setenv("PORTWAY_ADMIN_EMAILS", " Boss@x.io, ops@x.io ,")
    monkeypatch.setenv("PORTWAY_LOGIN_MODE", "email_only")
    monkeypatch.setenv("PORTWAY_JWT_EXPIRE_SECONDS", "120")
    cfg = IdentityConfig.from_settings(Settings(data_dir=tmp_path))
    assert cfg.admin_emails == frozenset({"boss@x.io", "ops@x.io"})
    assert cfg.login_mode == "email_only" and cfg.jwt_expire_seconds == 120
    with pytest.raises(ConfigError):
        IdentityConfig(data_dir=tmp_path, login_mode="magic")
    with pytest.raises(ConfigError):
        IdentityConfig(data_dir=tmp_path, jwt_expire_seconds=0)


def test_ttl_cache_expiry_bound_and_invalidation() -> None:
    cache: TTLCache[str, int | None] = TTLCache(max_entries=3)
    cache.put("a", 1, ttl=10, now=0)
    cache.put("miss", None, ttl=2, now=0)
    assert cache.get("a", 5) == (True, 1)
    assert cache.get("miss", 1) == (True, None)
    assert cache.get("miss", 2) == (False, None)
    for i in range(5):
        cache.put(f"k{i}", i, ttl=10, now=0)
    assert len(cache) == 3 and cache.get("a", 1) == (False, None)
    assert cache.drop_where(lambda v: v == 4) == 1
    assert cache.get("k4", 1) == (False, None)


def test_key_hash_is_hmac_sha256_of_the_key_under_the_derived_secret() -> None:
    # Stored hashes must stay valid across releases: the hash is pinned to its definition.
    secret = b"s" * 32
    expected = hmac.new(derive_key(secret, "virtual-key-hash/v1"), b"sk-pw-abc", hashlib.sha256).hexdigest()
    hasher = KeyHasher(secret)
    assert hasher.hash("sk-pw-abc") == expected == hasher.hash("sk-pw-abc")
    assert hasher.hash("sk-pw-abd") != expected
