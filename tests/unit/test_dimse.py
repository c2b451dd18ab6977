"""DIMSE command sets and upper-layer framing, checked against pynetdicom's own codecs."""

import socket
import struct
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF

from appliance.dicom import upper_layer as ul
from appliance.dicom.dimse import (
    NO_DATA_SET,
    CommandField,
    InvalidCommand,
    decode_command,
    encode_response,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.1"


def store_request_bytes(message_id: int = 7) -> bytes:
    command = Dataset()
    command.AffectedSOPClassUID = CT
    command.CommandField = CommandField.C_STORE_RQ
    command.MessageID = message_id
    command.Priority = 0
    command.CommandDataSetType = 0x0001
    command.AffectedSOPInstanceUID = INSTANCE
    encoded = encode(command, True, True)
    assert encoded is not None
    group_length = struct.pack("<HHLL", 0, 0, 4, len(encoded))
    return group_length + encoded


def test_decode_store_request() -> None:
    command = decode_command(store_request_bytes(4242))
    assert command.command_field == CommandField.C_STORE_RQ
    assert command.message_id == 4242
    assert command.affected_sop_class_uid == CT
    assert command.affected_sop_instance_uid == INSTANCE
    assert command.has_data_set


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xC000, 0x0122])
def test_store_response_reads_back_in_pydicom(status: int) -> None:
    request = decode_command(store_request_bytes(9))
    encoded = encode_response(request, status)
    response = decode(BytesIO(encoded[12:]), True, True)  # after the group length element
    assert response.CommandField == CommandField.C_STORE_RSP
    assert response.MessageIDBeingRespondedTo == 9
    assert response.Status == status
    assert response.AffectedSOPInstanceUID == INSTANCE
    assert response.AffectedSOPClassUID == CT
    assert response.CommandDataSetType == NO_DATA_SET
    (group_length,) = struct.unpack_from("<L", encoded, 8)
    assert group_length == len(encoded) - 12
    tags = [int(element.tag) for element in response]
    assert tags == sorted(tags)


def test_a_response_echoes_a_non_ascii_instance_uid_byte_for_byte() -> None:
    odd = b"\xc3\xa9" + b"1" * (len(INSTANCE) - 2)  # a UID the fuzzer sent; same length
    request = decode_command(store_request_bytes(3).replace(INSTANCE.encode(), odd))
    assert odd in encode_response(request, 0xC000)


def test_echo_response_has_no_instance_uid() -> None:
    command = Dataset()
    command.AffectedSOPClassUID = "1.2.840.10008.1.1"
    command.CommandField = CommandField.C_ECHO_RQ
    command.MessageID = 1
    command.CommandDataSetType = NO_DATA_SET
    encoded = encode(command, True, True)
    assert encoded is not None
    request = decode_command(encoded)
    assert not request.has_data_set
    response = decode(BytesIO(encode_response(request, 0)[12:]), True, True)
    assert response.CommandField == CommandField.C_ECHO_RSP
    assert "AffectedSOPInstanceUID" not in response


@pytest.mark.parametrize(
    "data",
    [b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00", b"\x08\x00\x16\x00\x02\x00\x00\x00AB", b""],
)
def test_invalid_commands(data: bytes) -> None:
    with pytest.raises(InvalidCommand):
        decode_command(data)


@pytest.mark.parametrize("max_pdu", [0, 16384, 100])
def test_data_tf_fragments_decode_in_pynetdicom(max_pdu: int) -> None:
    payload = bytes(range(256)) * 40
    pdus = ul.data_tf(5, False, payload, max_pdu)
    reassembled = b""
    for index, raw in enumerate(pdus):
        if max_pdu:
            assert len(raw) <= max_pdu
        pdu = P_DATA_TF()
        pdu.decode(raw)
        (item,) = pdu.presentation_data_value_items
        assert item.presentation_context_id == 5
        value = item.presentation_data_value
        control = value[0]
        assert control & 0x01 == 0
        assert bool(control & 0x02) == (index == len(pdus) - 1)
        reassembled += value[1:]
    assert reassembled == payload


def test_presentation_data_values_split_without_copying() -> None:
    body = bytearray()
    for context_id, control, data in [(1, 0x03, b"cmd"), (1, 0x00, b"data1"), (1, 0x02, b"xy")]:
        body += struct.pack(">LBB", len(data) + 2, context_id, control) + data
    values = list(ul.presentation_data_values(body))
    assert [(v.context_id, v.is_command, v.is_last, bytes(v.data)) for v in values] == [
        (1, True, True, b"cmd"),
        (1, False, False, b"data1"),
        (1, False, True, b"xy"),
    ]
    with pytest.raises(ul.ProtocolError):
        list(ul.presentation_data_values(bytearray(b"\x00\x00\x00\x09\x01\x00ab")))


def test_read_pdu_refuses_unknown_types_and_oversize() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"\x09\x00\x00\x00\x00\x00")
        with pytest.raises(ul.ProtocolError, match="unknown PDU type"):
            ul.read_pdu(right, 1024)
        left.sendall(b"\x04\x00\x00\x10\x00\x00")
        with pytest.raises(ul.ProtocolError, match="exceeds"):
            ul.read_pdu(right, 1024)
        left.sendall(ul.release_rp())
        kind, body = ul.read_pdu(right, 1024)
        assert kind is ul.PduType.RELEASE_RP
        assert body == b"\x00" * 4
        left.close()
        with pytest.raises(ul.PeerClosed):
            ul.read_pdu(right, 1024)
