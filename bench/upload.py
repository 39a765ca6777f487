"""The upload scenario: 10 MiB audio files through portway's POST /v1/audio/transcriptions to the nginx
upstream (a canned transcription), while portway's RSS is sampled every few milliseconds.

An upload must stream: portway spools it to disk and sends it on from there, so no worker's RSS grows by
the upload's size. The peak during the uploads is what is judged, not the RSS afterwards: a body held whole
in memory is freed when the request ends (Python returns big blocks to the system at once), so only a
sample taken while the upload is in flight can see it. The baseline is taken after one warm-up upload,
which pays for what the first upload loads once (the multipart parser, the audio probe, connection pools).
"""

from __future__ import annotations

import http.client
import json
import math
import os
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.procs import rss_mb

Log = Callable[[str], None]
MIB = 1024 * 1024
PATH = "/v1/audio/transcriptions"
MODEL = "bench/whisper-1"  # the `bench` provider: portway forwards the multipart body to the nginx upstream
CANNED_TEXT = "canned transcription"
BOUNDARY = "portway-bench-upload-boundary"
SAMPLE_SECONDS = 0.005


def canned_transcription() -> str:
    """What the upstream answers (OpenAI's `json` response_format)."""
    return json.dumps({"text": CANNED_TEXT}, separators=(",", ":"))


def wav_bytes(size: int, rate: int = 16_000) -> bytes:
    """A valid 16-bit mono PCM WAV of `size` bytes in all: a 440 Hz tone, so nothing mistakes it for
    silence or garbage (a decoder probe accepts it)."""
    data_len = (size - 44) // 2 * 2
    header = b"RIFF" + struct.pack("<I", 36 + data_len) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_len)
    period = [int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate // 40)]  # 1/40 s
    one = struct.pack(f"<{len(period)}h", *period)
    reps = data_len // len(one) + 1
    return header + (one * reps)[:data_len]


def multipart_body(audio: bytes, model: str = MODEL) -> bytes:
    def text(name: str, value: str) -> bytes:
        return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()

    head = text("model", model) + text("response_format", "json")
    head += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + audio + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_once(base: str, auth: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
    try:
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
        if auth:
            headers["Authorization"] = f"Bearer {auth}"
        conn.request("POST", PATH, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class _Sampler:
    """Max VmRSS per pid, sampled in a thread until stopped."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak: dict[int, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                mb = rss_mb(pid)
                if mb is not None and mb > self.peak.get(pid, 0.0):
                    self.peak[pid] = mb
            self.samples += 1
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _rss(pids: list[int]) -> dict[int, float]:
    return {p: mb for p in pids if (mb := rss_mb(p)) is not None}


def upload_rss(
    base: str, auth: str, pids: list[int], *, mib: int, count: int, concurrency: int, log: Log
) -> dict[str, Any]:
    """`count` uploads of `mib` MiB, `concurrency` at a time, after one warm-up upload; RSS per worker."""
    body = multipart_body(wav_bytes(mib * MIB))
    cold = _rss(pids)
    status, answer = upload_once(base, auth, body)
    if status != 200 or CANNED_TEXT.encode() not in answer:
        raise RuntimeError(f"upload warm-up answered {status}: {answer[:300]!r}")
    time.sleep(0.5)  # let the warm-up's buffers be released before the baseline
    before = _rss(pids)
    log(f"upload: {count} x {mib} MiB, {concurrency} at a time, to {PATH}; RSS every {SAMPLE_SECONDS} s")
    statuses: dict[str, int] = {}
    started = time.monotonic()
    with _Sampler(pids) as sampler, ThreadPoolExecutor(concurrency) as pool:
        for st, _ in pool.map(lambda _: upload_once(base, auth, body), range(count)):
            statuses[str(st)] = statuses.get(str(st), 0) + 1
    seconds = time.monotonic() - started
    after = _rss(pids)
    workers: dict[str, dict[str, Any]] = {}
    for pid in pids:
        if pid not in before:
            continue
        peak = max(sampler.peak.get(pid, 0.0), before[pid], after.get(pid, 0.0))
        workers[str(pid)] = {
            "cold_mb": round(cold.get(pid, before[pid]), 1),
            "before_mb": round(before[pid], 1),
            "peak_mb": round(peak, 1),
            "after_mb": round(after[pid], 1) if pid in after else None,
            "growth_mb": round(peak - before[pid], 1),
        }
    growth = max((w["growth_mb"] for w in workers.values()), default=None)
    out: dict[str, Any] = {
        "upload_mib": mib,
        "count": count,
        "concurrency": concurrency,
        "statuses": statuses,
        "seconds": round(seconds, 2),
        "mib_per_s": round(mib * count / seconds, 1) if seconds else None,
        "samples": sampler.samples,
        "workers": workers,
        "max_growth_mb": growth,
        "ok": statuses.get("200", 0) == count,
    }
    for name, w in workers.items():
        log(
            f"  worker {name}: RSS {w['cold_mb']} cold, {w['before_mb']} after warm-up, peak {w['peak_mb']}, "
            f"after {w['after_mb']} MB (growth {w['growth_mb']:+.1f} MB); statuses {statuses}, "
            f"{out['mib_per_s']} MiB/s"
        )
    return out


def main() -> None:
    """Run the scenario against a portway started by hand (its pid given), for a check in isolation."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default=os.environ.get("PORTWAY_MASTER_KEY", ""))
    parser.add_argument("--pid", type=int, action="append", required=True, help="a worker's pid")
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    r = upload_rss(
        args.url, args.key, args.pid, mib=args.mib, count=args.count, concurrency=args.concurrency, log=print
    )
    text = json.dumps(r, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
