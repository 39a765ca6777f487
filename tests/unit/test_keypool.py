"""Key pool verdicts: a 401 sets a key aside until its re-probe, a 403 leaves it in the pool."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from portway.http.client import Transport
from portway.providers.base import FailureKind, ProviderSettings
from portway.providers.openai_compat import OpenAICompatProvider
from portway.routing.keypool import KeyPool


def pool(*keys: str, recheck_after: float = 60.0) -> KeyPool:
    return KeyPool("p", list(keys), breaker_threshold=2, breaker_cooldown=10, recheck_after=recheck_after)


def test_rejected_key_leaves_the_pool_until_recheck_after() -> None:
    p = pool("k")
    s = p.acquire(0)
    assert s is not None
    p.report(s, FailureKind.AUTH, 0, None)
    p.release(s)
    assert p.acquire(59.9) is None and not p.has_usable(59.9)
    assert p.next_available_in(0) == pytest.approx(60)  # Retry-After points at the re-probe


def test_recheck_is_one_probe_and_a_working_key_comes_back() -> None:
    p = pool("k")
    s = p.acquire(0)
    assert s is not None
    p.report(s, FailureKind.AUTH, 0, 5.0)  # the runner passes routing.key_recheck_after
    p.release(s)
    probe = p.acquire(5)
    assert probe is s
    assert p.acquire(5) is None  # while one request re-probes the key, the others keep away
    p.report(probe, None, 5.1, None)
    p.release(probe)
    assert not s.disabled
    assert p.acquire(5.2) is s and p.acquire(5.2) is s  # back in the pool for everyone


def test_rejected_again_waits_another_period_and_an_abandoned_probe_frees_the_slot() -> None:
    p = pool("k", recheck_after=10)
    s = p.acquire(0)
    assert s is not None
    p.report(s, FailureKind.AUTH, 0, None)
    p.release(s)
    probe = p.acquire(10)
    assert probe is s
    p.abandon(probe)  # cancelled, or the request's deadline ran out: no verdict
    p.release(probe)
    probe = p.acquire(10)
    assert probe is s
    p.report(probe, FailureKind.AUTH, 10.5, None)
    p.release(probe)
    assert s.disabled and p.acquire(20) is None and p.acquire(20.5) is s


def test_forbidden_keeps_the_key_and_counts_as_an_answer_for_the_breaker() -> None:
    p = pool("k")
    s = p.acquire(0)
    assert s is not None
    p.report(s, FailureKind.SERVER, 0, None)
    p.report(s, FailureKind.FORBIDDEN, 1, None)
    p.release(s)
    assert not s.disabled and s.usable(1) and s.breaker.failures == 0


@pytest.mark.parametrize(("status", "kept"), [(403, True), (401, False)])
def test_upstream_status_reaches_the_pool_as_the_right_verdict(status: int, kept: bool) -> None:
    # The whole path a real answer takes: classification by the adapter, then the pool's verdict.
    provider = OpenAICompatProvider(ProviderSettings("p", "openai", "http://upstream/v1"), Transport())
    failure = provider.classify_error(status, CIMultiDict(), b"{}", "k")
    p = pool("k")
    s = p.acquire(0)
    assert s is not None
    p.report(s, failure.kind, 0, None)
    p.release(s)
    assert (p.acquire(1) is s) is kept
