"""py-spy under load: record collapsed stacks of a portway worker and summarise the hottest frames.

python -m bench.pyspy summarize FILE.raw     # re-print the summary of a recorded profile
"""

from __future__ import annotations

import argparse
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any


def record(exe: str, pid: int, seconds: int, out: Path, rate: int = 200) -> subprocess.Popen[bytes]:
    """Start recording (returns at once); collapsed stacks ("raw" format) go to `out`."""
    argv = [exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate)]
    # --gil: only the thread holding the GIL is sampled, i.e. what serialises a worker (SQLite's C code and
    # socket IO that release the GIL run beside it and are not counted).
    argv += ["--format", "raw", "--gil", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _frame_name(frame: str) -> str:
    """'func (pkg/module.py:123)' -> 'func (pkg/module.py)': keeps the identity, drops the line number."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({file})" if where else name


def _area(frame: str) -> str:
    """The package a frame's code belongs to (py-spy prints paths relative to sys.path)."""
    file = frame.partition(" (")[2].rstrip(")")
    top = file.split("/", 1)[0] if "/" in file else file.split(".", 1)[0]
    return top or "?"


_LOOP_FRAMES = ("Runner.run (", "run_until_complete (", "_run_once (", "Handle._run (")


def _request_part(frames: list[str]) -> list[str]:
    """Drop the start-up frames (CLI, uvicorn.run, the event loop itself) above the work being done."""
    cut = 0
    for i, f in enumerate(frames):
        if f.startswith(_LOOP_FRAMES):
            cut = i + 1
    return frames[cut:] if cut < len(frames) else frames[-1:]


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive share of samples per frame, per package, and per portway function."""
    self_n: Counter[str] = Counter()
    incl_n: Counter[str] = Counter()
    area_n: Counter[str] = Counter()
    portway_n: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = _request_part([_frame_name(f) for f in stack.split(";") if f])
        self_n[frames[-1]] += n
        area_n[_area(frames[-1])] += n
        for f in set(frames):
            incl_n[f] += n
            if _area(f) == "portway":
                portway_n[f] += n
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self_top": [(f, pct(c)) for f, c in self_n.most_common(top)],
        "inclusive_top": [(f, pct(c)) for f, c in incl_n.most_common(top)],
        "portway_inclusive": [(f, pct(c)) for f, c in portway_n.most_common(top)],
        "self_by_package": [(a, pct(c)) for a, c in area_n.most_common()],
    }


def as_text(summary: dict[str, Any]) -> str:
    lines = [f"samples: {summary['samples']} (each % below is of these)", "", "self % by package:"]
    lines += [f"  {p:5.1f}  {a}" for a, p in summary["self_by_package"]]
    lines += ["", "self % (leaf frames):"]
    lines += [f"  {p:5.1f}  {f}" for f, p in summary["self_top"]]
    lines += ["", "inclusive % of portway's own functions (frame anywhere on the stack):"]
    lines += [f"  {p:5.1f}  {f}" for f, p in summary["portway_inclusive"]]
    lines += ["", "inclusive % (any frame below the event loop):"]
    lines += [f"  {p:5.1f}  {f}" for f, p in summary["inclusive_top"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="summarise a py-spy raw (collapsed) profile")
    parser.add_argument("command", choices=["summarize"])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(as_text(summarize(args.raw, args.top)))


if __name__ == "__main__":
    main()
