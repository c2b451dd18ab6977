"""Hostile clients on the listener's port (loopback, their own source addresses in 127/8):
they cannot starve the trusted PACS, hold connections past the ARTIM deadline, make the
listener allocate what they announce, grow a data set without bound, fill the audit table,
or stop the accept loop."""

import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EncapsulatedPDFStorage,
    RawDataStorage,
    RTDoseStorage,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.dicom import upper_layer as ul
from appliance.dicom.spool import data_set_of
from appliance.store.models import AuditEvent
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import echoscu, storescu
from tests.support.scu import associate
from tests.support.services import ON_SQLITE_ONLY
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")
ANY_HOST = {"peers": [{"ae_title": "STORESCU"}]}  # a peer without hosts: any address may call


def audit(engine, event_type: str) -> list[str]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return [
            e.detail or ""
            for e in session.scalars(
                select(AuditEvent)
                .where(AuditEvent.event_type == event_type)
                .order_by(AuditEvent.id)
            )
        ]


def connect(port: int, source: str = "127.0.0.2") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


@contextmanager
def tricklers(port: int, sources: list[str], stop: threading.Event) -> Iterator[None]:
    """One connection from each source sending the start of an A-ASSOCIATE-RQ a byte every
    100 ms: each read the listener makes is answered in time, the request never ends."""

    def trickle(source: str) -> None:
        with ExitStack() as closing:
            try:
                raw = closing.enter_context(connect(port, source))
                for byte in struct.pack(">BxL", ul.PduType.ASSOCIATE_RQ, 4096) + bytes(4096):
                    if stop.wait(0.1):
                        return
                    raw.sendall(bytes([byte]))
            except OSError:
                return  # cut off: what the listener should do

    threads = [threading.Thread(target=trickle, args=(s,), daemon=True) for s in sources]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)


@ON_SQLITE_ONLY
def test_slow_strangers_cannot_keep_the_trusted_pacs_out(start) -> None:
    """Forty trickling connections from forty addresses against eight negotiation slots and
    two association slots: the trusted sender's echo and store still go through (before,
    every open connection counted against the association limit before its AE was known)."""
    running = start(listener={**ANY_HOST, "max_associations": 2, "max_negotiating": 8})
    stop = threading.Event()
    sources = [f"127.0.0.{n}" for n in range(2, 42)]
    with tricklers(running.port, sources, stop):
        time.sleep(1.0)  # every trickler connected and holding on
        for _ in range(3):
            assert echoscu(running.port).returncode == 0
    refusals = audit(running.engine, "association_refused")
    assert not any("too many concurrent associations" in r for r in refusals)
    assert any("too many associations being negotiated" in r for r in refusals)


@ON_SQLITE_ONLY
def test_a_host_no_peer_calls_from_is_refused_before_it_sends_a_byte(start) -> None:
    running = start(listener={"peers": [{"ae_title": "STORESCU", "hosts": ["127.0.0.1"]}]})
    with connect(running.port, "127.0.0.9") as stranger:
        reply = stranger.recv(10)  # nothing sent: the answer comes on connect
    assert reply[0] == ul.PduType.ASSOCIATE_RJ
    assert tuple(reply[7:10]) == (0x02, 0x03, 0x02)  # transient, provider, local limit
    assert echoscu(running.port).returncode == 0
    refusals = wait_for(lambda: audit(running.engine, "association_refused"), 5)
    assert refusals == ["no trusted peer calls from this host"]


@ON_SQLITE_ONLY
def test_the_association_request_has_one_deadline_however_slowly_it_comes(start) -> None:
    """A byte every 100 ms answers every read in time; the ARTIM deadline (1 s here) cuts
    the connection anyway and the audit says why."""
    running = start(listener={**ANY_HOST, "acse_timeout": 1.0})
    with connect(running.port) as slow:
        assert seconds_until_closed(slow, 10.0) < 3.0
    refusals = wait_for(lambda: audit(running.engine, "association_refused"), 5)
    assert refusals == ["association request not complete within 1 s"]


def seconds_until_closed(connection: socket.socket, limit: float) -> float:
    """Announce a 4 KiB A-ASSOCIATE-RQ, then send a byte of it every 100 ms until the other
    side closes; how long that took."""
    connection.sendall(struct.pack(">BxL", ul.PduType.ASSOCIATE_RQ, 4096))
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            connection.sendall(b"\x01")
            time.sleep(0.1)
            if connection.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                break
        except BlockingIOError:
            continue  # nothing to read yet: still open
        except OSError:
            break  # reset: closed
    return time.monotonic() - started


@ON_SQLITE_ONLY
def test_a_host_holds_no_more_connections_than_its_cap(start) -> None:
    running = start(listener={**ANY_HOST, "max_connections_per_host": 2})
    with connect(running.port) as first, connect(running.port) as second:
        with connect(running.port) as third:
            assert third.recv(10)[0] == ul.PduType.ASSOCIATE_RJ
        first.settimeout(0.3)
        second.settimeout(0.3)
        for held in (first, second):  # the first two are waiting for their request
            with pytest.raises(TimeoutError):
                held.recv(1)
    assert echoscu(running.port).returncode == 0  # another host's... and its own, once free
    refusals = audit(running.engine, "association_refused")
    assert refusals == ["too many open connections from this host"]


def test_an_announced_length_is_not_allocated_before_it_arrives() -> None:
    """A PDU header announcing 1 MiB followed by ten bytes: the reader holds about its first
    chunk, not the megabyte (before, the whole announced length was allocated at once)."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(struct.pack(">BxL", ul.PduType.DATA_TF, 1 << 20) + b"x" * 10)
        theirs.shutdown(socket.SHUT_WR)
        tracemalloc.start()
        try:
            with pytest.raises(ul.PeerClosed):
                ul.read_pdu(ours, 1 << 20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 256 * 1024


@ON_SQLITE_ONLY
def test_a_data_set_over_the_maximum_is_refused_and_not_kept(start, tmp_path: Path) -> None:
    running = start(listener={"max_instance_bytes": 1 << 20})
    big = write_series(new_series(1, rows=1024, columns=1024), tmp_path / "big")  # 2 MiB
    small = write_series(new_series(1), tmp_path / "small")
    assert storescu(running.port, big).returncode != 0  # a failure status
    assert storescu(running.port, small).returncode == 0  # and the listener serves on
    rejected = audit(running.engine, "instance_rejected")
    assert len(rejected) == 1
    assert "over the 1,048,576 bytes the listener takes" in rejected[0]
    assert len(audit(running.engine, "instance_stored")) == 1  # the small one


def test_a_flood_of_garbage_makes_one_audit_row_that_counts_the_rest(start) -> None:
    running = start(listener=ANY_HOST)
    for _ in range(20):
        with connect(running.port) as raw, suppress(OSError):  # closed on us: fine
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n")
            raw.recv(64)
    time.sleep(0.5)
    refusals = audit(running.engine, "association_refused")
    assert len(refusals) == 1
    assert refusals[0].startswith("no valid association request: unknown PDU type 0x47")
    assert echoscu(running.port).returncode == 0


@ON_SQLITE_ONLY
def test_refused_presentation_contexts_make_one_row_per_association(start) -> None:
    running = start()
    offered = [CTImageStorage, RTDoseStorage, EncapsulatedPDFStorage, RawDataStorage]
    assoc = associate(running.port, [(uid, [ExplicitVRLittleEndian]) for uid in offered])
    assert assoc.is_established
    assoc.release()
    rows = wait_for(lambda: audit(running.engine, "context_refused"), 5)
    assert len(rows) == 1
    assert rows[0].startswith("3 presentation contexts refused: ")


@ON_SQLITE_ONLY
def test_the_accept_loop_survives_a_connection_it_cannot_handle(start, monkeypatch) -> None:
    running = start()
    listener = running.listener
    failing = iter([True])
    real = listener._admit

    def admit_once_failing(connection: socket.socket, address: tuple[str, int]) -> None:
        if next(failing, False):
            raise RuntimeError("can't start new thread")
        real(connection, address)

    monkeypatch.setattr(listener, "_admit", admit_once_failing)
    with connect(running.port, "127.0.0.1") as first:
        assert first.recv(10) == b""  # closed: that one was lost
    assert echoscu(running.port).returncode == 0
    assert listener.alive()
    listener.stop()
    wait_for(lambda: not listener.alive(), 5)


@ON_SQLITE_ONLY
def test_a_large_data_set_is_streamed_to_the_spool_never_held_whole(start, tmp_path: Path) -> None:
    """A 17 MiB instance: past 8 MiB its fragments go to a file in the spool's staging
    directory as they arrive, and parsing and storing read that file; the listener's own
    allocations stay far below the instance's size (before: the data set grew in memory to
    its full size, then was copied once more), and nothing is left in staging."""
    running = start()
    (sent,) = write_series(new_series(1, rows=3000, columns=3000), tmp_path / "large")
    tracemalloc.start()
    try:
        assert storescu(running.port, [sent]).returncode == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent.stat().st_size > 17 * 2**20
    assert peak < 10 * 2**20, peak
    spool = Path(running.settings.spool.path)
    (stored,) = [p for p in spool.rglob("*.dcm")]
    assert data_set_of(stored.read_bytes()) == data_set_of(sent.read_bytes())
    assert list((spool / ".incoming").iterdir()) == []
