"""What the harness needs from outside the venv: Debian's nginx + echo module + wrk, py-spy, the optional
LiteLLM venv, and a description of the machine the figures were measured on."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
DEBIAN_PACKAGES = ("nginx-light", "libnginx-mod-http-echo", "wrk")
BENCH_DIR = Path(__file__).resolve().parent
LITELLM_VENV = BENCH_DIR / ".litellm-venv"
# Pinned on purpose (never an unpinned install): litellm 1.107.0 was a compromised release, and the
# releases from 1.106 on need a certifi newer than the package index here has.
LITELLM_SPEC = os.environ.get("BENCH_LITELLM_SPEC", "litellm[proxy]==1.100.0")


def ensure_debian_packages(log: Any) -> str:
    """Install nginx-light, its echo module and wrk when any of them is missing (needs root)."""
    if shutil.which("nginx") and shutil.which("wrk") and ECHO_MODULE.is_file():
        return "present"
    if os.geteuid() != 0:
        raise SystemExit(f"bench: needs {' '.join(DEBIAN_PACKAGES)}: run as root or apt-get install them")
    log(f"installing Debian packages: {' '.join(DEBIAN_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES], check=True, env=env, timeout=900)
    if not (shutil.which("nginx") and shutil.which("wrk") and ECHO_MODULE.is_file()):
        raise SystemExit("bench: the Debian packages did not provide nginx, wrk and the echo module")
    return "installed"


def py_spy() -> str | None:
    """py-spy from the venv (installed there with pip when missing); None if that fails."""
    exe = Path(sys.executable).parent / "py-spy"
    if exe.is_file():
        return str(exe)
    found = shutil.which("py-spy")
    if found:
        return found
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "py-spy"],
        capture_output=True,
        timeout=600,
        check=False,
    )
    return str(exe) if out.returncode == 0 and exe.is_file() else None


def litellm_exe(log: Any) -> tuple[str | None, str]:
    """The `litellm` proxy command from bench/.litellm-venv (created on first use), or (None, reason)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.is_file():
        return str(exe), "present"
    log(f"creating {LITELLM_VENV} and installing {LITELLM_SPEC} (a few minutes)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=300)
        pip = str(LITELLM_VENV / "bin" / "pip")
        out = subprocess.run(
            [pip, "install", "-q", LITELLM_SPEC], capture_output=True, text=True, timeout=1200, check=False
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"venv/pip failed: {exc}"
    if out.returncode != 0 or not exe.is_file():
        return None, f"pip install {LITELLM_SPEC} failed: {(out.stderr or out.stdout).strip()[-300:]}"
    return str(exe), "installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].split(" Copyright")[0] if text else "unknown"


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]),
        "wrk": _version(["wrk", "-v"]),
    }


def machine_label(m: dict[str, Any]) -> str:
    return (
        f"{m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}"
    )


def source_state(root: Path) -> dict[str, Any]:
    """Which portway was measured: the commit, and how many files under src/ differ from it."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except OSError:
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    changed = [ln for ln in git("status", "--porcelain", "--", "src").splitlines() if ln.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "src_files_changed": len(changed)}
