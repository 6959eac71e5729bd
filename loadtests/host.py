"""The machine under test: its description, and who used its CPU during a run (from /proc).

On a small machine the generator, the server and anything else (a Kafka broker, other jobs)
share the cores, so a report must say which side ran out: these samples give, per watched
process tree, the cores it used over the measurement window, how busy the machine was, and how
much CPU the hypervisor took away (steal).
"""
from __future__ import annotations

import multiprocessing
import os
import platform
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.parallel.cpus import run_queue_wait

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int, tid: int | None = None) -> list[str] | None:
    """The fields of /proc/<pid>/stat (of one thread's, with `tid`) after the name."""
    try:
        text = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (a gateway's model workers are its children)."""
    tree, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree.get(p, []))
    return out


def alive(pid: int) -> bool:
    """Whether `pid` is still running: a zombie has exited, it only waits to be reaped."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def process_cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def waiting_seconds(pid: int) -> float | None:
    """Seconds so far that the main thread of `pid` waited for a core: a single event loop that
    saturates loses throughput to whatever shares its core."""
    return run_queue_wait(f"{pid}/task/{pid}")


def preemptions(pid: int) -> int:
    """Times the main thread of `pid` lost its core while it could still run (involuntary
    context switches): how often something else was put on the loop's core."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    return int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])


def thread_cpu_seconds(pid: int, name_contains: str) -> float:
    """CPU seconds so far of the threads of `pid` whose name holds `name_contains` (e.g. a JVM's
    "CompilerThread"s: a fresh broker's JIT, which a long-running one has finished)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if name_contains not in Path(f"/proc/{pid}/task/{tid}/comm").read_text():
                continue
        except OSError:
            continue
        fields = _stat_fields(pid, int(tid))
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _machine_jiffies() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies over all cores since boot; steal is time the hypervisor gave
    to other guests, which no process here can see but which slows everything in a VM."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    values += [0] * (8 - len(values))
    idle, steal = values[3] + values[4], values[7]  # idle + iowait; steal
    total = sum(values[:8])  # guest time is already inside user
    return total - idle - steal, steal, total


@dataclass(frozen=True)
class CpuSample:
    machine: tuple[int, int, int]
    trees: dict[str, dict[int, float]]  # name -> {pid: cpu seconds so far}


def sample_cpu(watch: dict[str, int]) -> CpuSample:
    """Takes a sample of the machine and of each watched process tree (name -> root pid)."""
    trees = {}
    for name, pid in watch.items():
        trees[name] = {p: s for p in process_tree(pid) if (s := process_cpu_seconds(p)) is not None}
    return CpuSample(_machine_jiffies(), trees)


def cpu_between(a: CpuSample, b: CpuSample, wall_s: float) -> dict[str, float]:
    """Cores used between two samples: `machine_busy`, and per watched tree `name` (the whole
    tree) and `name.main` (its root process alone: a single event loop saturates at 1.0).

    Processes born in between count from zero; ones that died in between are lost (rare in a run).
    """
    total = max(1, b.machine[2] - a.machine[2])
    cores = os.cpu_count() or 1
    out = {"machine_busy": round((b.machine[0] - a.machine[0]) / total * cores, 3),
           "steal": round((b.machine[1] - a.machine[1]) / total * cores, 3)}
    wall_s = max(wall_s, 1e-9)
    for name, after in b.trees.items():
        before = a.trees.get(name, {})
        out[name] = round(sum(s - before.get(p, 0.0) for p, s in after.items()) / wall_s, 3)
        root = next(iter(after), None)  # process_tree() lists the root first
        if root is not None:
            out[f"{name}.main"] = round((after[root] - before.get(root, 0.0)) / wall_s, 3)
    return out


def busy_cores(interval: float = 1.0) -> float:
    """How many cores were busy (or stolen by the hypervisor) over the next `interval` seconds."""
    a = _machine_jiffies()
    time.sleep(interval)
    b = _machine_jiffies()
    return round((b[0] + b[1] - a[0] - a[1]) / max(1, b[2] - a[2]) * (os.cpu_count() or 1), 3)


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def python_speed(repeats: int = 5) -> float:
    """Milliseconds one core takes for a fixed piece of pure-Python work (best of `repeats`).

    The host's other tenants change how fast a vCPU runs without showing as steal here (runs of
    the same code differed by 30%); recorded next to a CPU-bound result, it tells a slow host
    from slow code."""
    def work() -> float:
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i * i
        return time.perf_counter() - start
    return round(min(work() for _ in range(repeats)) * 1e3, 1)


def steal_under_load(seconds: float = 0.5) -> float:
    """Cores the hypervisor took while every core here was kept busy for `seconds`.

    An idle VM shows no steal even when its host is overcommitted; the only way to see the host's
    state before a run is to ask for all the CPU briefly and look.
    """
    cores = os.cpu_count() or 1
    ctx = multiprocessing.get_context("fork")
    spinners = [ctx.Process(target=_spin, args=(seconds,), daemon=True) for _ in range(cores - 1)]
    for spinner in spinners:
        spinner.start()
    a = _machine_jiffies()
    _spin(seconds)
    b = _machine_jiffies()
    for spinner in spinners:
        spinner.join(seconds + 5)
    return round((b[1] - a[1]) / max(1, b[2] - a[2]) * cores, 3)


def wait_for_quiet(max_busy: float = 0.3, max_steal: float = 0.1, max_wait_s: float = 30.0) -> dict[str, float]:
    """Waits (bounded) until the machine is nearly idle and its hypervisor gives it the CPU it
    asks for, so other jobs and other guests do not skew the next run.

    Returns what it saw last and the seconds waited; the caller records them.
    """
    started = time.monotonic()
    while True:
        busy = busy_cores()
        steal = steal_under_load() if busy <= max_busy else None
        quiet = steal is not None and steal <= max_steal
        if quiet or time.monotonic() - started >= max_wait_s:
            return {"busy_cores": busy, "steal_cores": steal, "waited_s": round(time.monotonic() - started, 1),
                    "quiet": quiet}
        time.sleep(1.0)


def pid_listening_on(port: int) -> int | None:
    """The pid of the process with a listening TCP socket on `port` (e.g. the Kafka broker)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(cols[9])
    if not inodes:
        return None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(entry)
        except OSError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def describe_machine() -> dict[str, object]:
    """What a reader needs to judge the numbers: CPU, cores, memory, OS and library versions."""
    memory_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("onnxruntime", "numpy", "aiohttp", "uvloop", "orjson", "hdrhistogram")},
    }
