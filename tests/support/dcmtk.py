"""dcmtk's storescu and echoscu as a sending PACS would run them."""

import os
import subprocess
from pathlib import Path


def dcmtk_env() -> dict[str, str]:
    """dcmtk leaves Nagle's algorithm on unless TCP_NODELAY is set: every C-STORE stalls."""
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu_command(
    port: int, files: list[Path], *args: str, calling: str = "STORESCU", called: str = "APPLIANCE"
) -> list[str]:
    """storescu sending `files` to the appliance on loopback `port` (`args`: more options)."""
    return ["storescu", "-R", "-aet", calling, "-aec", called, *args, "127.0.0.1", str(port),
            *map(str, files)]  # fmt: skip


def storescu(
    port: int, files: list[Path], *args: str, calling: str = "STORESCU", called: str = "APPLIANCE"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        storescu_command(port, files, *args, calling=calling, called=called),
        env=dcmtk_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def echoscu(port: int, calling: str = "STORESCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "APPLIANCE", "127.0.0.1", str(port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
