"""Latency of one request after an idle gap: how much a cold CPU costs each server on this machine.

The streaming TTFT scenario sends a request to a server that has been mostly idle (4 streams, an event every
20 ms), and on this VM a process that wakes from idle runs its first microseconds far slower than a busy
one (the vCPU halts when idle; caches and predictors go cold). This measures it directly: one keep-alive
connection per server, c=1, a request, then a sleep of `gap` seconds, repeated; the latency percentiles per
gap show what waking costs nginx (C, one process), uvicorn answering by itself (`bench.floor`), and portway
(full pipeline: virtual key with limits, request log), each on the same non-stream request where it applies.

    .venv/bin/python -m bench.idle              # gaps 0, 1 ms, 10 ms, 100 ms, 500 ms
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from bench import deps, servers
from bench.procs import Server, raise_nofile
from bench.scenarios import BODY
from bench.stats import summary

GAPS = (0.0, 0.001, 0.01, 0.1, 0.5)


def _request(path: str, auth: str) -> bytes:
    body = BODY.encode()
    head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n" + (f"Authorization: Bearer {auth}\r\n" if auth else "")
    return head.encode() + b"\r\n" + body


def _one(sock: socket.socket, request: bytes) -> float:
    """Milliseconds from sending the request to having the whole answer (Content-Length or chunked)."""
    started = time.perf_counter()
    sock.sendall(request)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end < 0:
            continue
        head = data[:end].lower()
        if b"content-length:" in head:
            length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            if len(data) >= end + 4 + length:
                return (time.perf_counter() - started) * 1000
        elif data.endswith(b"0\r\n\r\n"):
            return (time.perf_counter() - started) * 1000


def measure(
    port: int, request: bytes, gaps: tuple[float, ...], samples: int
) -> dict[float, dict[str, float]]:
    out: dict[float, dict[str, float]] = {}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(50):  # warm the connection and the server's code
            _one(sock, request)
        for gap in gaps:
            values = []
            for _ in range(samples if gap >= 0.1 else samples * 5):
                values.append(_one(sock, request))
                time.sleep(gap)
            out[gap] = summary(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40, help="requests per gap of 100 ms or more")
    args = parser.parse_args()
    deps.ensure_debian_packages(print)
    raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="portway-idle-"))
    live: list[Server] = []
    try:
        up, _, up_port, _ = servers.nginx_servers(tmp)
        live.append(up)
        up.start(30)
        floor, port = servers.floor(tmp)
        live.append(floor)
        floor.start(30)
        pw = servers.portway(tmp, "portway", servers.portway_config(up_port), workers=1)
        live.append(pw.server)
        pw.server.start(60)
        key, _ = servers.virtual_key(pw.url)
        targets = {
            "nginx": (up_port, _request("/v1/chat/completions", "")),
            "uvicorn floor": (port, _request("/", "")),
            "portway": (pw.port, _request("/v1/chat/completions", key)),
        }
        print(f"{'server':14} " + " ".join(f"{'gap ' + format(g * 1000, 'g') + ' ms':>16}" for g in GAPS))
        for name, (p, request) in targets.items():
            found = measure(p, request, GAPS, args.samples)
            cells = " ".join(f"{found[g]['p50']:7.3f}/{found[g]['p90']:7.3f}" for g in GAPS)
            print(f"{name:14} {cells}   (p50/p90 ms)", flush=True)
    finally:
        for server in reversed(live):
            server.stop()


if __name__ == "__main__":
    main()
