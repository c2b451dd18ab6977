"""Delivery rules: what each C-STORE status means, and the retry schedule."""

from datetime import UTC, datetime, timedelta

import pytest

from appliance.dicom.dimse import CommandField, decode_command, encode_store_request
from appliance.domain.delivery import Outcome, RetryPolicy, classify
from appliance.domain.status import DimseStatus


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, Outcome.STORED),
        (0xB000, Outcome.STORED_WITH_WARNING),  # coercion: stored, changed
        (0xB007, Outcome.STORED_WITH_WARNING),
        (0x0001, Outcome.STORED_WITH_WARNING),
        (0xA700, Outcome.RETRY),  # out of resources: the PACS may recover
        (0xA7FF, Outcome.RETRY),
        (0x0213, Outcome.RETRY),
        (0x0110, Outcome.RETRY),
        (0xA900, Outcome.REFUSED),  # does not match SOP Class: never will
        (0xC000, Outcome.REFUSED),
        (0xC123, Outcome.REFUSED),
        (0x0122, Outcome.REFUSED),
        (0x0124, Outcome.REFUSED),
    ],
)
def test_status_classes(status: int, outcome: Outcome) -> None:
    assert classify(DimseStatus(status)) is outcome


def test_statuses_are_described_for_people() -> None:
    assert str(DimseStatus(0xA701)) == "0xA701 Refused: out of resources"
    assert str(DimseStatus(0xC001)) == "0xC001 Error: cannot understand"
    assert str(DimseStatus(0x0122)) == "0x0122 Refused: SOP Class not supported"


def test_backoff_doubles_to_its_maximum_and_stops_at_the_deadline() -> None:
    policy = RetryPolicy(timedelta(seconds=5), timedelta(seconds=30), timedelta(minutes=2))
    assert [policy.delay(n).total_seconds() for n in range(1, 7)] == [5, 10, 20, 30, 30, 30]
    start = datetime(2026, 11, 25, tzinfo=UTC)
    assert policy.next_attempt(start, 1, start) == start + timedelta(seconds=5)
    late = start + timedelta(seconds=100)
    assert policy.next_attempt(start, 5, late) is None  # 100 + 30 s is past 120 s


def test_store_request_round_trips() -> None:
    command = decode_command(encode_store_request(9, "1.2.840.10008.5.1.4.1.1.66", "1.2.3.4"))
    assert command.command_field == CommandField.C_STORE_RQ
    assert (command.message_id, command.affected_sop_instance_uid) == (9, "1.2.3.4")
    assert command.has_data_set
    assert command.status is None
