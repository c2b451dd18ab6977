"""The `appliance` command as an operator runs it: in a process of its own, or looked up."""

import subprocess
import sys
from pathlib import Path

import click

from appliance.cli import main


def run_cli(
    config: Path | None, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`appliance [--config CONFIG] ARGS...`, its output captured."""
    prefix = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "appliance", *prefix, *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def command_exists(words: list[str]) -> bool:
    """Whether `appliance WORDS...` runs a command of the CLI (words after it are its
    arguments)."""
    command: click.Command = main
    for word in words:
        if not isinstance(command, click.Group):
            return True
        if word not in command.commands:
            return False
        command = command.commands[word]
    return not isinstance(command, click.Group)  # a group alone runs nothing
