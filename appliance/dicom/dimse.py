"""DIMSE command sets for C-STORE and C-ECHO (PS3.7 section 9.3 and Annex E).

Command sets are always implicit VR little endian and carry only group 0000 elements, so they
are read and written here directly: a response costs microseconds instead of a general-purpose
data set encoding.
"""

import struct
from dataclasses import dataclass
from enum import IntEnum

_ELEMENT = struct.Struct("<HHL")


class CommandField(IntEnum):
    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030


NO_DATA_SET = 0x0101  # Command Data Set Type (0000,0800) when no data set follows

_AFFECTED_SOP_CLASS_UID = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_BEING_RESPONDED_TO = 0x0120
_PRIORITY = 0x0700
_COMMAND_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_AFFECTED_SOP_INSTANCE_UID = 0x1000


class InvalidCommand(ValueError):
    """A command set that cannot be decoded."""


@dataclass(frozen=True, slots=True)
class Command:
    command_field: int
    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    has_data_set: bool
    status: int | None = None  # responses only


def decode_command(data: bytes | bytearray | memoryview) -> Command:
    values: dict[int, bytes] = {}
    offset = 0
    size = len(data)
    while offset < size:
        if offset + _ELEMENT.size > size:
            raise InvalidCommand("truncated command element")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += _ELEMENT.size
        if group != 0x0000 or offset + length > size:
            raise InvalidCommand(f"unexpected element ({group:04X},{element:04X})")
        values[element] = bytes(data[offset : offset + length])
        offset += length
    try:
        (command_field,) = struct.unpack("<H", values[_COMMAND_FIELD])
        (message_id,) = struct.unpack(
            "<H", values.get(_MESSAGE_ID, values.get(_MESSAGE_ID_BEING_RESPONDED_TO, b"\0\0"))
        )
        (data_set_type,) = struct.unpack("<H", values[_COMMAND_DATA_SET_TYPE])
        status = struct.unpack("<H", values[_STATUS])[0] if _STATUS in values else None
    except (KeyError, struct.error) as exc:
        raise InvalidCommand(f"command set lacks a required element: {exc}") from None
    return Command(
        command_field=command_field,
        message_id=message_id,
        affected_sop_class_uid=_text(values.get(_AFFECTED_SOP_CLASS_UID, b"")),
        affected_sop_instance_uid=_text(values.get(_AFFECTED_SOP_INSTANCE_UID, b"")),
        has_data_set=data_set_type != NO_DATA_SET,
        status=status,
    )


def _text(raw: bytes) -> str:
    """A UID as sent, byte for byte (latin-1 maps every byte), so that a response echoes even
    an invalid one exactly; the data set's own check refuses it."""
    return raw.decode("latin-1").rstrip("\x00 ")


def _uid(element: int, value: str) -> bytes:
    raw = value.encode("latin-1")
    if len(raw) % 2:
        raw += b"\x00"
    return _ELEMENT.pack(0x0000, element, len(raw)) + raw


def _us(element: int, value: int) -> bytes:
    return _ELEMENT.pack(0x0000, element, 2) + struct.pack("<H", value)


def _with_group_length(body: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<L", len(body)) + body


MEDIUM_PRIORITY = 0x0000
DATA_SET_PRESENT = 0x0000  # any value but NO_DATA_SET; 0x0000 as most implementations send


def encode_store_request(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set; the data set follows in its own P-DATA values."""
    body = _uid(_AFFECTED_SOP_CLASS_UID, sop_class_uid)
    body += _us(_COMMAND_FIELD, CommandField.C_STORE_RQ)
    body += _us(_MESSAGE_ID, message_id)
    body += _us(_PRIORITY, MEDIUM_PRIORITY)
    body += _us(_COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT)
    body += _uid(_AFFECTED_SOP_INSTANCE_UID, sop_instance_uid)
    return _with_group_length(body)


def encode_echo_request(message_id: int) -> bytes:
    body = _uid(_AFFECTED_SOP_CLASS_UID, "1.2.840.10008.1.1")
    body += _us(_COMMAND_FIELD, CommandField.C_ECHO_RQ)
    body += _us(_MESSAGE_ID, message_id)
    body += _us(_COMMAND_DATA_SET_TYPE, NO_DATA_SET)
    return _with_group_length(body)


def encode_response(request: Command, status: int) -> bytes:
    """The response command set to `request` (C-STORE-RSP, C-ECHO-RSP or a generic failure)."""
    body = _uid(_AFFECTED_SOP_CLASS_UID, request.affected_sop_class_uid)
    body += _us(_COMMAND_FIELD, request.command_field | 0x8000)
    body += _us(_MESSAGE_ID_BEING_RESPONDED_TO, request.message_id)
    body += _us(_COMMAND_DATA_SET_TYPE, NO_DATA_SET)
    body += _us(_STATUS, status)
    if request.affected_sop_instance_uid:
        body += _uid(_AFFECTED_SOP_INSTANCE_UID, request.affected_sop_instance_uid)
    return _with_group_length(body)
