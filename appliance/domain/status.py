"""The DIMSE status vocabulary: every status the appliance answers or is answered, named once.

Codes and categories follow PS3.7 Annex C (general statuses) and PS3.4 Annex B.2.3 (Storage
Service Class), as pynetdicom's status tables have them (`pynetdicom.status`): a code is a
success, a warning (the peer stored the object, perhaps altered), a failure, a cancel or
pending. The listener answers `Status` members; the sender and the STOW-RS client report what
a peer answered as a `DimseStatus`; the delivery rules decide from its category.
"""

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class StatusCategory(StrEnum):
    SUCCESS = "Success"
    WARNING = "Warning"
    FAILURE = "Failure"
    CANCEL = "Cancel"
    PENDING = "Pending"
    UNKNOWN = "Unknown"


class Status(IntEnum):
    """Named status codes. A member that ends in 00 also names its range (A7xx, A9xx, Cxxx)."""

    SUCCESS = 0x0000
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
    ATTRIBUTE_LIST_ERROR = 0x0107
    PROCESSING_FAILURE = 0x0110
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORISED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNISED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    CANNOT_UNDERSTAND = 0xC000
    CANCEL = 0xFE00
    PENDING = 0xFF00


_TEXT = {
    Status.SUCCESS: "Success",
    Status.OPTIONAL_ATTRIBUTES_NOT_SUPPORTED: (
        "Warning: requested optional attributes are not supported"
    ),
    Status.ATTRIBUTE_LIST_ERROR: "Warning: attribute list error",
    Status.PROCESSING_FAILURE: "Processing failure",
    Status.ATTRIBUTE_VALUE_OUT_OF_RANGE: "Warning: attribute value out of range",
    Status.SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class not supported",
    Status.NOT_AUTHORISED: "Refused: not authorized",
    Status.DUPLICATE_INVOCATION: "Duplicate invocation",
    Status.UNRECOGNISED_OPERATION: "Unrecognized operation",
    Status.MISTYPED_ARGUMENT: "Mistyped argument",
    Status.RESOURCE_LIMITATION: "Resource limitation",
    Status.OUT_OF_RESOURCES: "Refused: out of resources",
    Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "Error: data set does not match SOP Class",
    Status.COERCION_OF_DATA_ELEMENTS: "Warning: coercion of data elements",
    Status.ELEMENTS_DISCARDED: "Warning: elements discarded",
    Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING: "Warning: data set does not match SOP Class",
    Status.CANNOT_UNDERSTAND: "Error: cannot understand",
    Status.CANCEL: "Cancel",
    Status.PENDING: "Pending",
}

# Ranges in which every code means what their first member names (PS3.4 Table B.2-1).
_RANGES = (
    (0xA700, 0xA7FF, Status.OUT_OF_RESOURCES),
    (0xA900, 0xA9FF, Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (0xC000, 0xCFFF, Status.CANNOT_UNDERSTAND),
)
# The failures of PS3.7 Annex C outside the A and C ranges (0x0110 to 0x0124 skip 011A-011F).
_GENERAL_FAILURES = frozenset(
    {0x0105, 0x0106, *range(0x0110, 0x0116), *range(0x0117, 0x011A), *range(0x0120, 0x0125),
     *range(0x0210, 0x0214)}
)  # fmt: skip


def category(code: int) -> StatusCategory:
    """The category of any status code, as `pynetdicom.status.code_to_category` gives it."""
    if code == Status.SUCCESS:
        return StatusCategory.SUCCESS
    if code in (0xFF00, 0xFF01):
        return StatusCategory.PENDING
    if code == Status.CANCEL:
        return StatusCategory.CANCEL
    if code in _GENERAL_FAILURES or 0xA000 <= code <= 0xAFFF or 0xC000 <= code <= 0xCFFF:
        return StatusCategory.FAILURE
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return StatusCategory.WARNING
    return StatusCategory.UNKNOWN


def named(code: int) -> Status | None:
    """The member that names `code`, itself or its range; None for an unnamed code."""
    try:
        return Status(code)
    except ValueError:
        return next((member for low, high, member in _RANGES if low <= code <= high), None)


@dataclass(frozen=True, slots=True)
class DimseStatus:
    """A status a peer answered, which may be one no table names."""

    code: int

    @property
    def category(self) -> StatusCategory:
        return category(self.code)

    def __str__(self) -> str:
        member = named(self.code)
        text = _TEXT[member] if member is not None else self.category.value
        return f"0x{self.code:04X} {text}"
