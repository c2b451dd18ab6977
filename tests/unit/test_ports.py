"""The ports tests start servers on: never one an outgoing connection may take meanwhile
(the kernel's ephemeral range), never the same twice from one worker."""

import socket

from tests.support.services import FIRST_PORT, PORTS_PER_WORKER, free_port


def ephemeral_range() -> range:
    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ranges:
        low, high = (int(value) for value in ranges.read().split())
    return range(low, high + 1)


def test_free_ports_lie_outside_the_ephemeral_range_and_do_not_repeat() -> None:
    ports = [free_port() for _ in range(PORTS_PER_WORKER // 4)]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & set(ephemeral_range())


def test_a_port_someone_holds_is_passed_over() -> None:
    first = free_port()
    start = first - (first - FIRST_PORT) % PORTS_PER_WORKER  # this worker's block
    following = start + (first - start + 1) % PORTS_PER_WORKER  # the next candidate
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", following))  # taken meanwhile
        assert free_port() not in (first, following)
