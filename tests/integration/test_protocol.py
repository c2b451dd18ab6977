"""Upper-layer robustness of the listener against broken and demanding peers."""

import socket
import struct
import time
from pathlib import Path

import pytest
from pynetdicom import AE, build_role
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.dicom.dimse import encode_store_request
from appliance.dicom.upper_layer import data_tf
from appliance.store.models import Association, AuditEvent
from tests.support.datasets import new_series, write_series
from tests.support.dcmtk import echoscu, storescu
from tests.support.scu import associate, send_files
from tests.support.services import ON_SQLITE_ONLY
from tests.support.waiting import wait_for

pytestmark = pytest.mark.usefixtures("dcmtk")


def association_outcomes(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        return [
            a.outcome or "" for a in session.scalars(select(Association).order_by(Association.id))
        ]


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x01\x00\x00\x00\x00\x10" + b"\x00" * 16,  # A-ASSOCIATE-RQ with a nonsense body
        b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x03",  # P-DATA before association
        b"\x01\x00\xff\xff\xff\xff",  # 4 GiB PDU length
    ],
)
@ON_SQLITE_ONLY
def test_garbage_is_dropped_and_the_listener_keeps_serving(start, garbage: bytes) -> None:
    running = start()
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as raw:
        raw.sendall(garbage)
        raw.shutdown(socket.SHUT_WR)
        reply = raw.recv(64)
    assert reply == b"" or reply[0] == 0x07  # closed, or an A-ABORT PDU
    assert echoscu(running.port).returncode == 0


@ON_SQLITE_ONLY
def test_pdata_on_an_unaccepted_context_aborts(start) -> None:
    running = start()
    assoc = associate(running.port, [(Verification, None)])
    assert assoc.is_established
    sock = assoc.dul.socket.socket  # type: ignore[union-attr]
    value = struct.pack(">LBB", 4, 99, 0x03) + b"xx"
    sock.sendall(struct.pack(">BxL", 0x04, len(value)) + value)
    time.sleep(0.5)
    assert assoc.is_aborted
    assert echoscu(running.port).returncode == 0
    outcomes = wait_for(
        lambda: [o for o in association_outcomes(running.engine) if "unaccepted context" in o], 5
    )
    assert any("unaccepted context 99" in o for o in outcomes)


def test_association_limit_refuses_transiently_with_audit(start, tmp_path: Path) -> None:
    running = start(listener={"max_associations": 1})
    held = associate(running.port, [(Verification, None)])
    assert held.is_established
    try:
        refused = storescu(running.port, write_series(new_series(1), tmp_path))
        assert "Local Limit Exceeded" in refused.stderr
    finally:
        held.release()
    with Session(running.engine) as session:
        details = [
            e.detail or ""
            for e in session.scalars(
                select(AuditEvent).where(AuditEvent.event_type == "association_refused")
            )
        ]
    assert any("too many concurrent associations" in d for d in details)
    assert echoscu(running.port).returncode == 0


@ON_SQLITE_ONLY
def test_role_selection_and_release_are_negotiated(start, tmp_path: Path) -> None:
    running = start()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate(
        "127.0.0.1",
        running.port,
        ae_title="APPLIANCE",
        ext_neg=[build_role(CTImageStorage, scu_role=True)],
    )
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 1 << 20
    assoc.release()
    assert assoc.is_released
    files = write_series(new_series(2), tmp_path)
    second = associate(running.port, [(CTImageStorage, ["1.2.840.10008.1.2.1"])])
    assert send_files(second, files, []) == [0, 0]
    second.abort()
    time.sleep(0.5)
    outcomes = association_outcomes(running.engine)
    assert outcomes[:1] == ["released"]
    assert outcomes[1] in ("aborted by peer", "connection closed")


@ON_SQLITE_ONLY
def test_foreign_application_context_is_rejected(start) -> None:
    from pydicom.uid import UID
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    running = start()
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID("1.2.3.4.5")
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "APPLIANCE"
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    primitive.user_information = [maximum]
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as raw:
        raw.sendall(pdu.encode())
        reply = raw.recv(10)
    assert reply[0] == 0x03  # A-ASSOCIATE-RJ
    assert tuple(reply[7:10]) == (0x01, 0x01, 0x02)  # permanent, service user, context name


@ON_SQLITE_ONLY
def test_a_stalled_dimse_message_aborts_the_association_an_idle_one_does_not(start) -> None:
    """The DIMSE timeout bounds the wait for the next fragment of a message under way; the
    network timeout, five times longer here, bounds an association idle between messages."""
    running = start(listener={"dimse_timeout": 1.0, "network_timeout": 10.0})
    idle = associate(running.port, [(Verification, None)])
    stalled = associate(running.port, [(CTImageStorage, ["1.2.840.10008.1.2.1"])])
    assert idle.is_established
    assert stalled.is_established
    context = stalled.accepted_contexts[0].context_id
    sock = stalled.dul.socket.socket  # type: ignore[union-attr]
    command = encode_store_request(1, CTImageStorage, "1.2.826.0.1.3680043.8.498.1")
    for pdu in data_tf(context, True, command, 16384):
        sock.sendall(pdu)
    fragment = b"\0" * 64
    pdv = struct.pack(">LBB", len(fragment) + 2, context, 0x00)  # data set, more to come
    sock.sendall(struct.pack(">BxL", 0x04, len(pdv) + len(fragment)) + pdv + fragment)
    wait_for(lambda: stalled.is_aborted, 5)
    outcomes = wait_for(
        lambda: [o for o in association_outcomes(running.engine) if "DIMSE timeout" in o], 5
    )
    assert outcomes == ["aborted: DIMSE timeout"]
    assert idle.is_established
    assert idle.send_c_echo().Status == 0
    idle.release()
