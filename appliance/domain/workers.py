"""Who holds a running job: a worker process named so that it cannot be mistaken for another,
even once its number is reused (host, process ID and the process's start time)."""

import os
import socket
from pathlib import Path


def process_identity(pid: int | None = None) -> str:
    """host:pid:start, the start in clock ticks since boot as /proc gives it: what a job's
    claim records of its worker."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_started(pid) or '?'}"


def still_running(identity: str, host: str) -> bool | None:
    """Whether the process `identity` names still runs: None when it ran on another host
    (only its lease can tell), else whether a process of that number and start time exists."""
    parts = identity.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return None
    current = _started(int(parts[1]))
    return current is not None and parts[2] in (current, "?")


def _started(pid: int) -> str | None:
    """The process's start time, field 22 of /proc/PID/stat; None when there is no such
    process (or no /proc to ask)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]
