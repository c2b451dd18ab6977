"""A pynetdicom Storage SCU for tests and benchmarks: sends files byte-exact, Nagle off."""

import socket
from pathlib import Path

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event


def _no_delay(event: Event) -> None:
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def associate(
    port: int,
    contexts: list[tuple[str, list[str] | None]],
    calling: str = "PYSCU",
    called: str = "APPLIANCE",
) -> Association:
    """Open an association; each file sent on it goes as stored, never decoded or re-encoded."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling)
    for abstract, syntaxes in contexts:
        if syntaxes:
            ae.add_requested_context(abstract, syntaxes)
        else:
            ae.add_requested_context(abstract)
    return ae.associate(
        "127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)]
    )


def send_files(assoc: Association, paths: list[Path], acknowledged: list[Path]) -> list[int]:
    """Send until a failure; append each path whose Success arrived. Returns every status."""
    statuses = []
    for path in paths:
        try:
            response = assoc.send_c_store(path)
        except (RuntimeError, OSError):
            break
        if "Status" not in response:
            break
        statuses.append(int(response.Status))
        if response.Status == 0:
            acknowledged.append(path)
    return statuses
