"""DICOM unique identifiers (PS3.5 section 9): typed and validated once, at the edge."""

import re
import uuid
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


# Namespace of the appliance's derived UIDs (a fixed random UUID; never change it, or re-runs
# would stop reproducing the UIDs the PACS already holds).
_DERIVED_NAMESPACE = uuid.UUID("6b1f4f9e-3d5c-4c1b-9a57-2f0e8c4d7a31")


def derive_uid(*parts: str) -> Uid:
    """A UID that is a function of `parts` only (PS3.5 B.2: ``2.25.`` and a UUID as an integer,
    here a name-based UUID of RFC 9562 section 5.5).

    Results take their UIDs from their inputs, pipeline and model version, so a re-run makes
    the same SOP Instance UIDs and the PACS replaces rather than duplicates."""
    if not parts:
        raise ValueError("a derived UID needs at least one part")
    name = "\x1f".join(parts)  # unit separator: ("a", "bc") and ("ab", "c") differ
    return Uid(f"2.25.{uuid.uuid5(_DERIVED_NAMESPACE, name).int}")
