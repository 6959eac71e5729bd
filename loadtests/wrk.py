"""Runs wrk (the Debian package, `make tools`) on the same request, as the outside reference.

wrk is a closed-loop C generator: its throughput with N connections is what our closed-loop
mode with N connections must match if our generator is not the bottleneck.
"""
from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
from typing import Any

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua(method: str, body: bytes) -> str:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("body cannot be quoted for Lua")
    return (f'wrk.method = "{method}"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{text}]==]\n")


def _ms(value: str, unit: str) -> float:
    return round(float(value) * _UNITS[unit], 3)


def parse(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    if m:
        result["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if m:
        result["requests_per_s"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    latency = {f"p{int(p) if p.isdigit() else p}": _ms(v, u)
               for p, v, u in re.findall(r"^\s+([\d.]+)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)}
    if latency:
        result["latency_ms"] = latency
    return result


def run(url: str, body: bytes, *, threads: int = 2, connections: int = 32, duration: float = 10.0,
        method: str = "POST") -> dict[str, Any]:
    """wrk's figures (requests/s, latency percentiles, errors) plus the exact command line."""
    if not available():
        raise RuntimeError("wrk is not installed; run `make tools` (Debian package wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_lua(method, body))
        script.flush()
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", script.name, url]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": " ".join(argv[:-3] + ["post.lua", url]), **parse(done.stdout),
            "cpu_cores": round(cpu_s / duration, 3), "output": done.stdout}
