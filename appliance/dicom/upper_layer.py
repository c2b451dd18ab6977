"""DICOM Upper Layer framing on a socket (PS3.8 section 9.3): PDUs and P-DATA-TF values.

The acceptor's hot path reads every PDU with `recv_into` straight into one buffer and splits
P-DATA-TF items without copying, which is what lets a Python listener keep pace with a C
sender. Association negotiation PDUs are decoded and encoded with pynetdicom's PDU classes.
"""

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

_PDU_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")


class PduType(IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class AbortSource(IntEnum):
    SERVICE_USER = 0x00
    SERVICE_PROVIDER = 0x02


class AbortReason(IntEnum):
    """A-ABORT reason/diagnostic when the source is the service provider (Table 9-26)."""

    NOT_SPECIFIED = 0x00
    UNRECOGNISED_PDU = 0x01
    UNEXPECTED_PDU = 0x02
    UNRECOGNISED_PDU_PARAMETER = 0x04
    UNEXPECTED_PDU_PARAMETER = 0x05
    INVALID_PDU_PARAMETER_VALUE = 0x06


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ result (PS3.8 Table 9-21)."""

    PERMANENT = 0x01
    TRANSIENT = 0x02


class RejectSource(IntEnum):
    SERVICE_USER = 0x01
    SERVICE_PROVIDER_ACSE = 0x02
    SERVICE_PROVIDER_PRESENTATION = 0x03


class ProviderRejectReason(IntEnum):
    """Reasons when the source is the presentation-related service provider."""

    TEMPORARY_CONGESTION = 0x01
    LOCAL_LIMIT_EXCEEDED = 0x02


class UserRejectReason(IntEnum):
    NO_REASON_GIVEN = 0x01
    APPLICATION_CONTEXT_NOT_SUPPORTED = 0x02
    CALLING_AE_TITLE_NOT_RECOGNISED = 0x03
    CALLED_AE_TITLE_NOT_RECOGNISED = 0x07


class ProtocolError(Exception):
    """The peer broke the upper layer protocol; the association must be aborted."""

    def __init__(self, message: str, reason: AbortReason) -> None:
        super().__init__(message)
        self.reason = reason


class PeerClosed(Exception):
    """The transport connection closed."""


_CONTROL_COMMAND = 0x01
_CONTROL_LAST = 0x02


@dataclass(frozen=True, slots=True)
class PresentationDataValue:
    """One PDV item (PS3.8 section 9.3.5.1 and Annex E.2)."""

    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


# The first allocation for a PDU body; it doubles as bytes arrive, so an announced length
# costs memory only once the peer has sent about half of it.
_FIRST_CHUNK = 64 * 1024


def receive_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(min(size, _FIRST_CHUNK))
    received = 0
    while received < size:
        if received == len(buffer):
            buffer.extend(bytes(min(len(buffer), size - len(buffer))))
        with memoryview(buffer) as view:
            count = sock.recv_into(view[received:], len(buffer) - received)
        if count == 0:
            raise PeerClosed("connection closed by peer")
        received += count
    return buffer


def read_pdu(sock: socket.socket, max_length: int) -> tuple[PduType, bytearray]:
    """Read one PDU and return its type and its body (everything after the 6-byte header)."""
    pdu_type, length = _PDU_HEADER.unpack(receive_exactly(sock, _PDU_HEADER.size))
    try:
        kind = PduType(pdu_type)
    except ValueError:
        raise ProtocolError(
            f"unknown PDU type 0x{pdu_type:02X}", AbortReason.UNRECOGNISED_PDU
        ) from None
    if length > max_length:
        raise ProtocolError(
            f"PDU of {length} bytes exceeds the {max_length} negotiated",
            AbortReason.INVALID_PDU_PARAMETER_VALUE,
        )
    return kind, receive_exactly(sock, length)


def with_header(kind: PduType, body: bytes) -> bytes:
    return _PDU_HEADER.pack(kind, len(body)) + body


def presentation_data_values(body: bytearray) -> Iterator[PresentationDataValue]:
    """Split a P-DATA-TF body into its PDV items, as views into `body`."""
    view = memoryview(body)
    offset = 0
    while offset < len(body):
        if offset + _PDV_HEADER.size > len(body):
            raise ProtocolError("truncated PDV item", AbortReason.INVALID_PDU_PARAMETER_VALUE)
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        end = offset + 4 + length
        if length < 2 or end > len(body):
            raise ProtocolError(
                "PDV item length out of range", AbortReason.INVALID_PDU_PARAMETER_VALUE
            )
        yield PresentationDataValue(
            context_id=context_id,
            is_command=bool(control & _CONTROL_COMMAND),
            is_last=bool(control & _CONTROL_LAST),
            data=view[offset + _PDV_HEADER.size : end],
        )
        offset = end


def data_tf(context_id: int, is_command: bool, data: bytes, max_pdu: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying `data` in fragments that fit the peer's maximum PDU length."""
    room = (max_pdu - 6) if max_pdu else len(data) + 6  # 0 means no limit
    chunk = max(room, 7) - 6  # PDV header: length (4), context (1), control (1)
    pdus = []
    offsets = range(0, max(len(data), 1), chunk)
    for index, start in enumerate(offsets):
        fragment = data[start : start + chunk]
        control = (_CONTROL_COMMAND if is_command else 0) | (
            _CONTROL_LAST if index == len(offsets) - 1 else 0
        )
        item = _PDV_HEADER.pack(len(fragment) + 2, context_id, control) + fragment
        pdus.append(with_header(PduType.DATA_TF, item))
    return pdus


def release_rp() -> bytes:
    return with_header(PduType.RELEASE_RP, b"\x00\x00\x00\x00")


def abort(source: AbortSource, reason: AbortReason = AbortReason.NOT_SPECIFIED) -> bytes:
    return with_header(PduType.ABORT, bytes([0, 0, source, reason]))


def associate_rj(
    result: RejectResult, source: RejectSource, reason: ProviderRejectReason | UserRejectReason
) -> bytes:
    return with_header(PduType.ASSOCIATE_RJ, bytes([0, result, source, reason]))
