"""One association, acceptor side (PS3.8 section 9 state machine, reduced to what an SCP needs).

Negotiation uses pynetdicom: its PDU codec and its presentation context negotiation. The data
phase is handled here in one thread per association, without the polling loops, queues and
general-purpose command-set encoding of pynetdicom's reactor: P-DATA-TF values are assembled
into whole messages, C-ECHO and C-STORE requests are dispatched, and each response is written
straight to the socket.
"""

import contextlib
import logging
import mmap
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from appliance.dicom import upper_layer as ul
from appliance.dicom.association import (
    APPLICATION_CONTEXT_NAME,
    MAX_PDU_LENGTH,
    our_user_information,
)
from appliance.dicom.dimse import (
    Command,
    CommandField,
    InvalidCommand,
    decode_command,
    encode_response,
)
from appliance.dicom.sop_classes import VERIFICATION
from appliance.domain.encoding import Encoded
from appliance.domain.ingest import RELEASED
from appliance.domain.status import Status

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of A-ASSOCIATE negotiation."""

    calling_ae: str
    called_ae: str
    accepted: dict[int, PresentationContext]
    rejected: list[PresentationContext]
    peer_max_pdu: int


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """A whole C-STORE-RQ: its data set as received, on the presentation context it came."""

    data_set: Encoded  # a large data set: its spilled file, mapped
    transfer_syntax_uid: str  # the context's
    context_sop_class_uid: str  # the context's abstract syntax
    sop_class_uid: str  # Affected SOP Class UID of the command
    sop_instance_uid: str  # Affected SOP Instance UID of the command
    oversized: int = 0  # bytes of a data set beyond the maximum, received and dropped


StoreHandler = Callable[[StoreRequest], Status]


class DimseTimeout(TimeoutError):
    """A DIMSE message stopped arriving part way: no fragment within the DIMSE timeout."""


# The longest A-ASSOCIATE-RQ read: 128 presentation contexts, each with a dozen transfer
# syntaxes of full-length UIDs, need about 100 KiB.
MAX_REQUEST_LENGTH = 256 * 1024


def read_request(sock: socket.socket) -> A_ASSOCIATE:
    """Read the A-ASSOCIATE-RQ that opens an association."""
    kind, body = ul.read_pdu(sock, MAX_REQUEST_LENGTH)
    if kind is not ul.PduType.ASSOCIATE_RQ:
        raise ul.ProtocolError(
            f"expected A-ASSOCIATE-RQ, got {kind.name}", ul.AbortReason.UNEXPECTED_PDU
        )
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(ul.with_header(kind, bytes(body)))
        return pdu.to_primitive()
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ul.ProtocolError(
            f"malformed A-ASSOCIATE-RQ: {exc}", ul.AbortReason.INVALID_PDU_PARAMETER_VALUE
        ) from exc


def accept(
    sock: socket.socket, request: A_ASSOCIATE, supported: list[PresentationContext]
) -> Negotiated:
    """Negotiate presentation contexts and roles, and send the A-ASSOCIATE-AC."""
    roles = {
        UID(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in request.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid
    }
    results, reply_roles = negotiate_as_acceptor(
        request.presentation_context_definition_list, supported, roles
    )
    response = A_ASSOCIATE()
    response.application_context_name = UID(APPLICATION_CONTEXT_NAME)
    response.calling_ae_title = request.calling_ae_title
    response.called_ae_title = request.called_ae_title
    response.result = 0x00
    response.result_source = 0x01
    response.presentation_context_definition_results_list = results
    response.user_information = [*our_user_information(), *reply_roles]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(response)
    sock.sendall(pdu.encode())
    return Negotiated(
        calling_ae=str(request.calling_ae_title).strip(),
        called_ae=str(request.called_ae_title).strip(),
        accepted={cx.context_id: cx for cx in results if cx.result == 0x00},  # type: ignore[misc]
        rejected=[cx for cx in results if cx.result != 0x00],
        peer_max_pdu=int(request.maximum_length_received or 0),
    )


# The largest data set held by default: one that never ends must not grow without bound.
MAX_DATA_SET_BYTES = 2 << 30
# Beyond this a data set goes to a file as it arrives, never held whole in memory.
SPILL_AFTER_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class DataSetLimits:
    """How large a data set may grow, and from what size it is written to a file in
    `spill_directory` (on the spool's file system) as its fragments arrive; without a
    directory every data set stays in memory."""

    maximum: int = MAX_DATA_SET_BYTES
    spill_after: int = SPILL_AFTER_BYTES
    spill_directory: Path | None = None


@dataclass
class _Message:
    """A DIMSE message being assembled from P-DATA values on one presentation context."""

    context_id: int
    command: Command | None = None
    command_bytes: bytearray = field(default_factory=bytearray)
    data_set: bytearray = field(default_factory=bytearray)
    spill: BinaryIO | None = None  # where a large data set goes instead of `data_set`
    spill_path: Path | None = None
    size: int = 0  # of the data set so far
    dropped: int = 0  # bytes received after the data set outgrew the maximum; none kept

    def add(self, data: memoryview, limits: DataSetLimits) -> None:
        """Keep a data set fragment, in memory or, once the data set is large, in its file."""
        if self.dropped or self.size + len(data) > limits.maximum:
            self.dropped = (self.dropped or self.size) + len(data)
            self.discard()
            return
        spill_now = self.spill is None and self.size + len(data) > limits.spill_after
        if spill_now and limits.spill_directory is not None:
            descriptor, name = tempfile.mkstemp(suffix=".part", dir=limits.spill_directory)
            self.spill = open(descriptor, "w+b")  # noqa: SIM115 - closed in discard
            self.spill_path = Path(name)
            self.spill.write(self.data_set)
            self.data_set = bytearray()
        if self.spill is not None:
            self.spill.write(data)
        else:
            self.data_set += data
        self.size += len(data)

    def discard(self) -> None:
        """Let the data set go: its memory, and its file if it has one."""
        self.data_set = bytearray()
        if self.spill is not None:
            self.spill.close()
            self.spill = None
        if self.spill_path is not None:
            self.spill_path.unlink(missing_ok=True)
            self.spill_path = None


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds a read may wait: `network` between messages (an idle association), `dimse`
    once a message has begun, for each of its further fragments (dcmtk's DIMSE timeout)."""

    network: float
    dimse: float


def serve(
    sock: socket.socket,
    negotiated: Negotiated,
    on_store: StoreHandler,
    timeouts: Timeouts,
    limits: DataSetLimits = DataSetLimits(),
) -> str:
    """Run the data phase until release or abort; returns how the association ended. On an
    A-RELEASE-RQ it returns RELEASED and leaves the A-RELEASE-RP to the caller, who frees the
    association's slot first: a sender that reconnects at once finds it free. Raises
    DimseTimeout when a message in progress stalls, TimeoutError when the association idles.
    A data set beyond `limits.maximum` bytes is read to its end but not kept: its C-STORE is
    answered with the handler's verdict on an oversized request. A message cut off leaves
    no file behind."""
    message: _Message | None = None
    sock.settimeout(timeouts.network)
    try:
        while True:
            try:
                kind, body = ul.read_pdu(sock, MAX_PDU_LENGTH)
            except TimeoutError as exc:
                if message is not None:
                    stalled = f"no fragment of a DIMSE message for {timeouts.dimse:g} s"
                    raise DimseTimeout(stalled) from exc
                raise
            if kind is ul.PduType.RELEASE_RQ:
                return RELEASED
            if kind is ul.PduType.ABORT:
                return "aborted by peer"
            if kind is not ul.PduType.DATA_TF:
                raise ul.ProtocolError(f"unexpected {kind.name}", ul.AbortReason.UNEXPECTED_PDU)
            for value in ul.presentation_data_values(body):
                context = negotiated.accepted.get(value.context_id)
                if context is None:
                    raise ul.ProtocolError(
                        f"P-DATA on unaccepted context {value.context_id}",
                        ul.AbortReason.INVALID_PDU_PARAMETER_VALUE,
                    )
                if message is None:
                    message = _Message(value.context_id)
                    sock.settimeout(timeouts.dimse)
                elif message.context_id != value.context_id:
                    raise ul.ProtocolError(
                        "P-DATA interleaves two messages", ul.AbortReason.UNEXPECTED_PDU
                    )
                if _add_fragment(message, value, limits):
                    try:
                        _respond(sock, negotiated, context, message, on_store)
                    finally:
                        message.discard()
                    message = None
                    sock.settimeout(timeouts.network)
    finally:
        if message is not None:
            message.discard()


def _add_fragment(
    message: _Message, value: ul.PresentationDataValue, limits: DataSetLimits
) -> bool:
    """Add one PDV; True when the message is whole."""
    if value.is_command:
        if message.command is not None:
            raise ul.ProtocolError(
                "command fragment after a complete command", ul.AbortReason.UNEXPECTED_PDU
            )
        message.command_bytes += value.data
        if not value.is_last:
            return False
        try:
            message.command = decode_command(message.command_bytes)
        except InvalidCommand as exc:
            raise ul.ProtocolError(str(exc), ul.AbortReason.INVALID_PDU_PARAMETER_VALUE) from exc
        return not message.command.has_data_set
    if message.command is None or not message.command.has_data_set:
        raise ul.ProtocolError(
            "data set fragment without a command announcing it", ul.AbortReason.UNEXPECTED_PDU
        )
    message.add(value.data, limits)
    return value.is_last


def _respond(
    sock: socket.socket,
    negotiated: Negotiated,
    context: PresentationContext,
    message: _Message,
    on_store: StoreHandler,
) -> None:
    command = message.command
    assert command is not None
    abstract = str(context.abstract_syntax)
    if command.command_field == CommandField.C_ECHO_RQ and abstract == VERIFICATION:
        status = Status.SUCCESS
    elif command.command_field == CommandField.C_STORE_RQ and abstract != VERIFICATION:
        with _received(message) as data_set:
            status = on_store(
                StoreRequest(
                    data_set,
                    str(context.transfer_syntax[0]),
                    abstract,
                    command.affected_sop_class_uid,
                    command.affected_sop_instance_uid,
                    message.dropped,
                )
            )
    else:
        LOG.warning("unsupported DIMSE command 0x%04X on %s", command.command_field, abstract)
        status = Status.UNRECOGNISED_OPERATION
    for pdu in ul.data_tf(
        message.context_id, True, encode_response(command, status), negotiated.peer_max_pdu
    ):
        sock.sendall(pdu)


@contextlib.contextmanager
def _received(message: _Message) -> Iterator[Encoded]:
    """The message's data set: its bytes, or its spilled file mapped read-only (the pages
    are the file's, read as the handler reads them, never copied whole into memory)."""
    if message.spill is None:
        yield bytes(message.data_set)
        return
    message.spill.flush()
    with mmap.mmap(message.spill.fileno(), 0, access=mmap.ACCESS_READ) as view:
        yield view
