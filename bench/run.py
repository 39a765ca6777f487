"""`make bench`: every target and scenario in one run; results to bench/results/ and docs/performance.md.

Targets: the nginx upstream itself (direct), a bare nginx proxy_pass in front of it (the floor), the bare
Starlette + uvicorn + aiohttp forwarder (bench/forwarder.py), portway with the full pipeline (1 worker, and
2 workers for throughput and the soak), and LiteLLM's proxy when BENCH_LITELLM=1. Knobs: bench/plan.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import deps, report, scenarios, servers
from bench.local_model import measure_portway, measure_raw
from bench.plan import Plan
from bench.procs import Server, raise_nofile
from bench.scenarios import Target
from bench.upload import upload_rss

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", flush=True)


class Run:
    """Owns every server it starts and stops them all, whatever happens."""

    def __init__(self, plan: Plan, tmp: Path) -> None:
        self.plan = plan
        self.tmp = tmp
        self.live: list[Server] = []
        self.r: dict[str, Any] = {"failures": {}}

    def start(self, server: Server, timeout: float = 60.0) -> Server:
        self.live.append(server)
        server.start(timeout)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self.live:
            self.live.remove(server)

    def stop_all(self) -> None:
        for server in reversed(self.live):
            with contextlib.suppress(Exception):
                server.stop()
        self.live.clear()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A failing scenario is recorded and the run goes on to the next one."""
        try:
            yield
        except Exception as exc:
            log(f"{name} FAILED: {exc}")
            traceback.print_exc()
            self.r["failures"][name] = f"{type(exc).__name__}: {exc}"

    def targets(self) -> list[Target]:
        plan, tmp = self.plan, self.tmp
        up, proxy, up_port, proxy_port = servers.nginx_servers(tmp)
        self.start(up)
        self.start(proxy)
        fwd, fwd_port = servers.forwarder(tmp, up_port)
        self.start(fwd)
        pw1 = servers.portway(tmp, "portway", servers.portway_config(up_port), workers=1)
        self.start(pw1.server)
        key1, self.r["auth_label"] = servers.virtual_key(pw1.url)
        log(f"portway auth: {self.r['auth_label']}")
        pw2 = servers.portway(tmp, "portway_2w", servers.portway_config(up_port), workers=plan.soak_workers)
        self.start(pw2.server)
        key2, _ = servers.virtual_key(pw2.url)
        self.upstream_port = up_port
        stream = "/stream/v1/chat/completions"
        found = [
            Target("direct", f"http://127.0.0.1:{up_port}", stream_path=stream, server=up),
            Target("nginx_proxy", f"http://127.0.0.1:{proxy_port}", stream_path=stream, server=proxy),
            Target("forwarder", f"http://127.0.0.1:{fwd_port}", stream_path=stream, server=fwd),
            Target("portway", pw1.url, auth=key1, server=pw1.server),
            Target("portway_2w", pw2.url, auth=key2, server=pw2.server),
        ]
        for t in found:
            scenarios.smoke(t)
        self.r["litellm"] = {"status": "not run (set BENCH_LITELLM=1)"}
        if plan.litellm:
            with self.step("litellm"):
                self.r["litellm"] = {"status": "not run (start failed)"}
                exe, how = deps.litellm_exe(log)
                if exe is None:
                    self.r["litellm"] = {"status": f"not run ({how})"}
                else:
                    ll, ll_port = servers.litellm(tmp, exe, up_port)
                    self.start(ll, timeout=180)
                    ll_target = Target("litellm", f"http://127.0.0.1:{ll_port}", auth=servers.LITELLM_KEY)
                    ll_target.server = ll
                    scenarios.smoke(ll_target)
                    found.append(ll_target)
                    self.r["litellm"] = {"status": f"run: {deps.LITELLM_SPEC}, 2 workers ({how})"}
        return found

    def execute(self) -> None:
        plan, r = self.plan, self.r
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        r.update(timestamp=stamp, machine=deps.machine(), plan=plan.as_dict(), source=deps.source_state(ROOT))
        r["debian_packages"] = deps.ensure_debian_packages(log)
        r["machine"] = deps.machine()
        raise_nofile()
        targets = self.targets()
        by_name = {t.name: t for t in targets}
        with self.step("wrk"):
            r["wrk"] = scenarios.wrk_matrix(targets, plan.wrk_seconds, plan.warmup_seconds, log)
        if plan.profile:
            with self.step("profile"):
                exe = deps.py_spy()
                if exe is None:
                    raise RuntimeError("py-spy is not available")
                r["profile"] = scenarios.profile(
                    by_name["portway"], exe, plan.profile_seconds, RESULTS, stamp, plan.streams, log
                )
        with self.step("streams"):
            r["streams"] = scenarios.streaming(targets, plan, log)
        portway = by_name["portway"].server
        assert portway is not None
        r["rss_after_load_mb"] = scenarios.rss_of(portway)
        for t in targets:  # the soak and the rest run with nothing else alive but the upstream
            if t.name not in ("direct", "portway_2w") and t.server is not None:
                self.stop(t.server)
        with self.step("overload"):
            cfg = servers.portway_config(self.upstream_port, max_in_flight=plan.overload_max_in_flight)
            pw = servers.portway(self.tmp, "portway_overload", cfg, workers=1)
            self.start(pw.server)
            key, _ = servers.virtual_key(pw.url)
            r["overload"] = scenarios.overload(
                Target("overload", pw.url, auth=key), plan.overload_concurrency, plan.overload_seconds, log
            )
            self.stop(pw.server)
        with self.step("upload"):
            pw = servers.portway(self.tmp, "portway_upload", servers.portway_config(self.upstream_port))
            self.start(pw.server)
            key, _ = servers.virtual_key(pw.url)
            r["upload"] = upload_rss(
                pw.url,
                key,
                pw.server.workers(),
                mib=plan.upload_mib,
                count=plan.upload_count,
                concurrency=plan.upload_concurrency,
                log=log,
            )
            self.stop(pw.server)
        with self.step("soak"):
            target = by_name["portway_2w"]
            db = self.tmp / "portway_2w" / "data" / "portway.db"
            before = scenarios.request_log_rows(db)
            r["soak"] = soak = scenarios.soak(target, plan.soak_seconds, plan.rss_interval, log)
            assert target.server is not None
            self.stop(target.server)  # a graceful stop drains every worker's usage writer
            answered = soak.get("wrk", {}).get("requests", 0)
            soak["usage"] = check = scenarios.usage_check(
                before, scenarios.request_log_rows(db), answered, 32
            )
            log(f"  usage records: {check['written']:,} written for {check['answered']:,} answered")
        self.stop_all()
        if plan.local:
            with self.step("local"):
                r["local"] = self.local()

    def local(self) -> dict[str, Any]:
        log("local model: raw llama-cpp-python")
        raw = measure_raw(runs=self.plan.local_runs)
        log(f"  raw median {raw['median_tps']} tok/s")
        pw = servers.portway(self.tmp, "portway_local", servers.portway_config(0, local=True), workers=1)
        self.start(pw.server)
        try:
            served = measure_portway(pw.url, servers.MASTER_KEY, runs=self.plan.local_runs)
        finally:
            self.stop(pw.server)
        log(f"  portway median {served['median_tps']} tok/s")
        note = "same GGUF, prompt, max_tokens and greedy sampling; 1 warm-up + median of the timed runs;"
        return {
            "raw": raw,
            "portway": served,
            "ratio": round(served["median_tps"] / raw["median_tps"], 3),
            "note": note,
        }


def _on_signal(signum: int, _: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    plan = Plan.from_env()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="portway-bench-"))
    signal.signal(signal.SIGTERM, _on_signal)
    run = Run(plan, tmp)
    log(f"{'quick' if plan.quick else 'full'} run; scratch dir {tmp}; soak {plan.soak_seconds:g} s")
    finished: Callable[[], None] = run.stop_all
    try:
        run.execute()
    except KeyboardInterrupt:
        log("interrupted: stopping servers, no results written")
        return 130
    finally:
        finished()
    r = run.r
    r["wall_s"] = round(time.monotonic() - _T0, 1)
    r["file"] = f"{r['timestamp']}.json"
    (RESULTS / r["file"]).write_text(json.dumps(r, indent=1, default=str) + "\n")
    report.write(r, RESULTS, DOC)
    log(f"wrote bench/results/{r['file']}, bench/results/latest.md and {DOC.relative_to(ROOT)}")
    print("\n" + report.targets_table(r) + "\n\n" + report.ratio_table(r))
    if r["failures"] or os.environ.get("BENCH_KEEP"):
        log(f"failures: {sorted(r['failures'])}; server logs kept in {tmp}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
