"""CPU time and memory of a process tree, from ``/proc`` (Linux, proc(5))."""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("latin-1")
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (pre-forked workers)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes (fields 14 and 15 of /proc/PID/stat), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pids: list[int]) -> int:
    """Current resident set size summed over the processes (VmRSS)."""
    return sum(_status_kb(p, "VmRSS") for p in pids) * 1024


def hwm_bytes(pids: list[int]) -> int:
    """Peak resident set size summed over the processes (VmHWM; an upper bound of the tree's peak)."""
    return sum(_status_kb(p, "VmHWM") for p in pids) * 1024


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds of a server tree at one moment."""

    pids: tuple[int, ...]
    cpu: float


def snapshot(pid: int) -> Snapshot:
    """The tree's CPU seconds now."""
    pids = process_tree(pid)
    return Snapshot(tuple(pids), cpu_seconds(pids))


def own_cpu_seconds() -> float:
    """This process's user + system CPU seconds (the load generator's own cost)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat`` cpu line, minus idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK
