"""A pynetdicom Storage SCU for tests and benchmarks: sends files byte-exact, Nagle off.

Send with `store`, not `Association.send_c_store`: pynetdicom's requestor runs a reactor thread
beside send_c_store, and it can take a response off the queue in the instant before send_c_store
waits for it (pydicom/pynetdicom#875: it logs "Received unexpected C-STORE service message");
send_c_store then times out although the peer answered. `store` reads the status as it came
off the wire, so a peer is judged on what it sent.
"""

import socket
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.events import Event


@dataclass
class _Answers:
    """The statuses of the responses received on one association, by the message ID each answers."""

    statuses: dict[int, int] = field(default_factory=dict)
    last_id: int = 0


_ANSWERS: "weakref.WeakKeyDictionary[Association, _Answers]" = weakref.WeakKeyDictionary()


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
    answers = _Answers()
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=called,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, _no_delay),
            (evt.EVT_DIMSE_RECV, _record_answer, [answers]),
        ],
    )
    _ANSWERS[assoc] = answers
    return assoc


def _record_answer(event: Event, answers: _Answers) -> None:
    command = event.message.command_set  # type: ignore[attr-defined]
    if "MessageIDBeingRespondedTo" in command and "Status" in command:
        answers.statuses[int(command.MessageIDBeingRespondedTo)] = int(command.Status)


def store(assoc: Association, item: Path | Dataset) -> int | None:
    """C-STORE `item` on an association opened by `associate`: the status the peer answered
    with, or None where no answer came. Raises as send_c_store does where none could be sent."""
    answers = _ANSWERS[assoc]
    answers.last_id = answers.last_id % 0xFFFF + 1
    response = assoc.send_c_store(item, msg_id=answers.last_id)
    if "Status" in response:
        return int(response.Status)
    return answers.statuses.get(answers.last_id)


def send_files(assoc: Association, paths: list[Path], acknowledged: list[Path]) -> list[int]:
    """Send until a failure; append each path whose Success arrived. Returns every status."""
    statuses = []
    for path in paths:
        try:
            status = store(assoc, path)
        except (RuntimeError, OSError):
            break
        if status is None:
            break
        statuses.append(status)
        if status == 0:
            acknowledged.append(path)
    return statuses
