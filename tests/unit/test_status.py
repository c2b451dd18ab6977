"""The DIMSE status vocabulary against its reference, pynetdicom's status tables."""

import pytest
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from appliance.domain.status import DimseStatus, Status, StatusCategory, category, named


def test_every_code_has_pynetdicoms_category() -> None:
    differing = [code for code in range(0x10000) if category(code).value != code_to_category(code)]
    assert differing == []


def test_every_named_status_is_a_storage_status_of_the_same_category() -> None:
    for member in Status:
        if member in (Status.OPTIONAL_ATTRIBUTES_NOT_SUPPORTED, Status.PENDING):
            continue  # general statuses the storage table leaves out
        expected, _ = STORAGE_SERVICE_CLASS_STATUS[member]
        assert category(member).value == expected, member.name


@pytest.mark.parametrize(
    ("code", "member"),
    [
        (0xA700, Status.OUT_OF_RESOURCES),
        (0xA7FF, Status.OUT_OF_RESOURCES),
        (0xA912, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
        (0xCFFF, Status.CANNOT_UNDERSTAND),
        (0x0122, Status.SOP_CLASS_NOT_SUPPORTED),
        (0xB001, None),
        (0x0105, None),
    ],
)
def test_a_code_is_named_by_its_member_or_range(code: int, member: Status | None) -> None:
    assert named(code) is member


def test_an_unnamed_code_reads_as_its_category() -> None:
    assert str(DimseStatus(0xB123)) == "0xB123 Warning"
    assert str(DimseStatus(0x0105)) == "0x0105 Failure"
    assert DimseStatus(0x7777).category is StatusCategory.UNKNOWN
