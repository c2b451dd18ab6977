"""The one way tests wait: poll a check until it holds, or fail saying what it last saw."""

import socket
import time
from collections.abc import Callable
from typing import TypeVar

import requests

T = TypeVar("T")


def wait_for(check: Callable[[], T], seconds: float, interval: float = 0.1) -> T:
    """The first truthy value of `check()`; AssertionError with its last value after
    `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not so within {seconds:g} s; last seen: {value!r}")
        time.sleep(interval)


def answers_http(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
    except requests.ConnectionError:
        return False
    return True


def wait_for_http(url: str, seconds: float = 30) -> None:
    """Return once something answers HTTP at `url`."""
    wait_for(lambda: answers_http(url), seconds, interval=0.05)


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on loopback `port`."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, seconds: float = 30) -> None:
    """Return once something listens on loopback `port`."""
    wait_for(lambda: listening(port), seconds, interval=0.05)
