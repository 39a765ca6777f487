"""Rotating keys: a policy keeps exactly one current key and replaces it every period, on a timer.

* Timer: one asyncio task per worker sleeps until the earliest ``next_rotation_at`` (at most
  ``max_sleep`` seconds, so policies created by other replicas are picked up), then rotates every due
  policy. An overdue policy (the server was down) is rotated right at start.
* Replicas: every worker runs the timer; ``IdentityStore.rotate_policy`` is a conditional UPDATE
  (``WHERE current_key_id = <old>``), so exactly one racer rotates and the others find nothing to do.
  Winners and losers alike then drop the old key from their authentication cache.
* Grace: the previous key gets ``expires_at = rotated_at + grace_seconds`` (grace 0: refused at once).
* The current key's plaintext is stored sealed (see identity_crypto.Sealer) because admins read it via
  ``GET /admin/keys/current``; rotated-out keys keep only their hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from portway.errors import NotFound, ValidationError
from portway.identity.crypto import KeyHasher, Sealer, new_api_key, new_id
from portway.identity.keys import new_key_row
from portway.identity.models import PolicyCreate
from portway.limits.policy import iso
from portway.limits.spec import limit_values
from portway.stores.sql.identity import DuplicateError, IdentityStore, KeyRow, PolicyRow

log = logging.getLogger("portway.rotation")
DEFAULT_MAX_SLEEP = 30.0


def next_rotation_at(rotated_at: float, period: float) -> float:
    """A late rotation restarts the schedule from when it happened (no burst of catch-up rotations)."""
    return rotated_at + period


def is_due(policy: PolicyRow, now: float) -> bool:
    return policy.next_rotation_at <= now


def sleep_for(policies: Sequence[PolicyRow], now: float, max_sleep: float = DEFAULT_MAX_SLEEP) -> float:
    """Seconds until the next rotation is due, capped at ``max_sleep`` (0 if one is overdue)."""
    wait = max_sleep
    for p in policies:
        wait = min(wait, max(0.0, p.next_rotation_at - now))
    return wait


def key_valid_until(policy: PolicyRow) -> float:
    """When the current key stops working if rotation happens on time: next rotation + grace."""
    return policy.next_rotation_at + policy.grace_seconds


def policy_json(policy: PolicyRow) -> dict[str, Any]:
    return {
        "id": policy.id,
        "object": "key_policy",
        "name": policy.name,
        "period_seconds": policy.period_seconds,
        "grace_seconds": policy.grace_seconds,
        "current_key_id": policy.current_key_id,
        "previous_key_id": policy.previous_key_id,
        "rotated_at": iso(policy.rotated_at),
        "next_rotation_at": iso(policy.next_rotation_at),
        "allowed_models": policy.allowed_models,
        **limit_values(policy),
        "created_at": iso(policy.created_at),
    }


class Rotator:
    def __init__(
        self,
        store: IdentityStore,
        hasher: KeyHasher,
        sealer: Sealer,
        on_rotated: Callable[[str], None],
        *,
        max_sleep: float = DEFAULT_MAX_SLEEP,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.sealer = sealer
        self._on_rotated = on_rotated  # called with the replaced key's id: drop it from the auth cache
        self.max_sleep = max_sleep
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _key_for(self, policy: PolicyRow, plaintext: str) -> KeyRow:
        return new_key_row(
            self.hasher,
            plaintext,
            name=f"policy:{policy.name}",
            user_id=None,
            policy_id=policy.id,
            expires_at=None,  # set when the key is rotated out
            allowed_models=policy.allowed_models,
            **limit_values(policy),
            meta={"policy": policy.name},
        )

    async def create_policy(self, body: PolicyCreate) -> tuple[PolicyRow, KeyRow, str]:
        now = time.time()
        period = body.period()
        policy = PolicyRow(
            id=new_id("pol_"),
            name=body.name,
            period_seconds=period,
            grace_seconds=body.grace_seconds,
            current_key_id=None,
            previous_key_id=None,
            rotated_at=now,
            next_rotation_at=next_rotation_at(now, period),
            sealed_key=None,
            allowed_models=body.allowed_models,
            **limit_values(body),
            created_at=now,
        )
        plaintext = new_api_key()
        key = self._key_for(policy, plaintext)
        policy = replace(policy, current_key_id=key.id, sealed_key=self.sealer.seal(plaintext))
        try:
            await self.store.insert_policy(policy, key)
        except DuplicateError:
            raise ValidationError(f"A key policy named {body.name!r} already exists", param="name") from None
        self.wake()  # the timer may be sleeping longer than this policy's first period
        return policy, key, plaintext

    async def get(self, name: str) -> PolicyRow:
        policy = await self.store.get_policy(name)
        if policy is None:
            raise NotFound(f"No key policy named {name!r}", param="policy")
        return policy

    async def rotate(self, policy: PolicyRow, now: float | None = None) -> bool:
        """Rotate now; False if another replica rotated this policy first (then nothing was written)."""
        t = time.time() if now is None else now
        plaintext = new_api_key()
        key = self._key_for(policy, plaintext)
        won = await self.store.rotate_policy(
            policy,
            key,
            sealed=self.sealer.seal(plaintext),
            now=t,
            next_at=next_rotation_at(t, policy.period_seconds),
        )
        if policy.current_key_id is not None:
            self._on_rotated(policy.current_key_id)
        if won:
            log.info("rotated the key of policy %s (new key id %s)", policy.name, key.id)
        return won

    async def current(self, name: str) -> dict[str, Any]:
        """The policy's current key, plaintext included (admins only). Rotates first if overdue, so a
        lagging timer never hands out a key that is about to be replaced."""
        policy = await self.get(name)
        if is_due(policy, time.time()):
            await self.rotate(policy)
            policy = await self.get(name)
        if policy.sealed_key is None or policy.current_key_id is None:
            raise NotFound(f"Key policy {name!r} has no current key", param="policy")
        return {
            "policy": policy.name,
            "api_key": self.sealer.open(policy.sealed_key),
            "key_id": policy.current_key_id,
            "rotated_at": iso(policy.rotated_at),
            "next_rotation_at": iso(policy.next_rotation_at),
            "expires_at": iso(key_valid_until(policy)),
        }

    async def rotate_due(self) -> float:
        """Rotate every due policy; returns how long the timer may sleep."""
        now = time.time()
        policies = await self.store.all_policies()
        for policy in policies:
            if is_due(policy, now):
                await self.rotate(policy, now)
        if any(is_due(p, now) for p in policies):
            policies = await self.store.all_policies()
        return sleep_for(policies, time.time(), self.max_sleep)

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before the pass: a wake() during it must not be lost
            try:
                wait = await self.rotate_due()
            except Exception:  # a DB hiccup must not kill the timer: retry soon
                log.exception("key rotation failed; retrying in 1 s")
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="portway-key-rotation")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
