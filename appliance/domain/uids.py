"""DICOM unique identifiers (PS3.5 section 9): typed and validated once, at the edge."""

import re
from typing import NewType

Uid = NewType("Uid", str)

_UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
UID_MAX_LENGTH = 64


class InvalidUid(ValueError):
    """A value that is not a conformant DICOM UID."""


def parse_uid(value: object, attribute: str) -> Uid:
    """Return `value` as a `Uid`, or raise `InvalidUid` naming the attribute.

    Conformance matters beyond pedantry: UIDs become spool path components, so a value such as
    ``../x`` must never get through.
    """
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text:
        raise InvalidUid(f"{attribute} is missing or empty")
    if len(text) > UID_MAX_LENGTH:
        raise InvalidUid(f"{attribute} is longer than {UID_MAX_LENGTH} characters")
    if not _UID_PATTERN.match(text):
        raise InvalidUid(f"{attribute} is not a valid UID")
    return Uid(text)
