"""Parse a received data set, once, into an `InstanceRecord` (PS3.5 section 7 encoding).

The encoded bytes are stored exactly as received, so parsing only has to check that the encoding
is whole and read the handful of attributes the appliance needs. One walk over the element
headers does both: defined lengths are skipped, undefined lengths (sequences, items,
encapsulated pixel data) are followed to their delimiters, every element must end inside the
data and the last one exactly at its end. A transfer cut anywhere is caught without decoding
pixel data, at a small fraction of a full pydicom parse.
"""

import zlib

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from appliance.dicom.sop_classes import PIXEL_DATA_REQUIRED
from appliance.domain.encoding import (
    ITEM_DELIMITER,
    SEQUENCE_DELIMITER,
    UNDEFINED_LENGTH,
    Encoded,
    MalformedEncoding,
    header,
    value_end,
)
from appliance.domain.instance import InstanceRecord, PatientIdentity
from appliance.domain.status import Status
from appliance.domain.uids import InvalidUid, Uid, parse_uid

SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_DATE = 0x00080020
ACCESSION_NUMBER = 0x00080050
MODALITY = 0x00080060
STUDY_DESCRIPTION = 0x00081030
SERIES_DESCRIPTION = 0x0008103E
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
PATIENT_BIRTH_DATE = 0x00100030
BODY_PART_EXAMINED = 0x00180015
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SERIES_NUMBER = 0x00200011
INSTANCE_NUMBER = 0x00200013
IMAGES_IN_ACQUISITION = 0x00201002
NUMBER_OF_FRAMES = 0x00280008


PIXEL_DATA_PRESENT = -1  # a key of `walk`'s result: the data set has pixel data

_WANTED = frozenset(
    {
        SPECIFIC_CHARACTER_SET, SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_DATE, ACCESSION_NUMBER,
        MODALITY, STUDY_DESCRIPTION, SERIES_DESCRIPTION, PATIENT_NAME, PATIENT_ID,
        PATIENT_BIRTH_DATE, BODY_PART_EXAMINED, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID,
        SERIES_NUMBER, INSTANCE_NUMBER, IMAGES_IN_ACQUISITION, NUMBER_OF_FRAMES,
    }
)  # fmt: skip
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # float, double, pixel data
PN_DELIMITERS = frozenset(
    {0x5E, 0x3D}
)  # '^' and '=' reset ISO 2022 code extensions in a person name


class InvalidInstance(ValueError):
    """A data set the appliance will not store, with the C-STORE status to answer."""

    def __init__(self, reason: str, status: Status = Status.CANNOT_UNDERSTAND) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def inflate(data: Encoded) -> bytes:
    """Undo the Deflated Explicit VR Little Endian transfer syntax (raw deflate, RFC 1951)."""
    try:
        return zlib.decompress(data, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise InvalidInstance(f"deflated data set does not inflate: {exc}") from exc


def walk(data: Encoded, implicit: bool, little: bool) -> dict[int, bytes]:
    """Check that `data` is a whole encoding and return the wanted top-level values."""
    values: dict[int, bytes] = {}
    try:
        end = _walk(data, 0, implicit, little, values)
    except MalformedEncoding as exc:
        raise InvalidInstance(str(exc)) from exc
    if end != len(data):
        raise InvalidInstance(f"data set has {len(data) - end} undecodable trailing bytes")
    return values


def _walk(
    data: Encoded, pos: int, implicit: bool, little: bool, values: dict[int, bytes] | None
) -> int:
    """Walk elements from `pos`; top level when `values` is given, else inside a sequence."""
    while pos < len(data):
        tag, vr, length, start = header(data, pos, implicit, little)
        if tag in (ITEM_DELIMITER, SEQUENCE_DELIMITER):
            if values is not None:
                raise InvalidInstance(f"unexpected delimiter at byte {pos}")
            return start
        if values is not None and tag in PIXEL_DATA_TAGS:
            values[PIXEL_DATA_PRESENT] = b""
        if length == UNDEFINED_LENGTH:
            # Undefined-length UN content is implicit VR little endian (PS3.5 section 6.2.2).
            unknown = vr == b"UN"
            pos = _walk(data, start, implicit or unknown, little or unknown, None)
            continue
        pos = value_end(data, start, length)
        if values is not None and tag in _WANTED:
            values[tag] = data[start:pos]
    if values is None:
        raise InvalidInstance("data set is truncated before a sequence delimiter")
    return pos


# Maximum value lengths of the VRs read here (PS3.5 Table 6.2-1). Longer values from a
# non-conformant sender are clipped in the record; the stored file keeps them as sent.
_MAX_LENGTH = {
    STUDY_DATE: 8, ACCESSION_NUMBER: 16, MODALITY: 16, STUDY_DESCRIPTION: 64,
    SERIES_DESCRIPTION: 64, PATIENT_NAME: 324, PATIENT_ID: 64, PATIENT_BIRTH_DATE: 8,
    BODY_PART_EXAMINED: 16,
}  # fmt: skip


def _clip(tag: int, text: str | None) -> str | None:
    limit = _MAX_LENGTH.get(tag)
    return text[:limit] if text and limit else text


def _ascii(values: dict[int, bytes], tag: int) -> str | None:
    raw = values.get(tag)
    if raw is None:
        return None
    return _clip(tag, raw.decode("ascii", errors="replace").strip(" \x00") or None)


def _integer(values: dict[int, bytes], tag: int) -> int | None:
    text = _ascii(values, tag)
    try:
        return int(text.split("\\")[0]) if text else None
    except ValueError:
        return None


def _uid(values: dict[int, bytes], tag: int, keyword: str) -> Uid:
    try:
        return parse_uid(_ascii(values, tag), keyword)
    except InvalidUid as exc:
        raise InvalidInstance(str(exc)) from exc


def _person_name(name: str | None) -> str | None:
    """Drop trailing empty components and groups, which PS3.5 section 6.2.1 makes optional."""
    return name.rstrip("=^ ") or None if name else None


class _Text:
    """Decodes character-set dependent values (PS3.5 section 6.1) as pydicom does."""

    def __init__(self, values: dict[int, bytes]) -> None:
        self._values = values
        declared = _ascii(values, SPECIFIC_CHARACTER_SET) or ""
        try:  # pydicom falls back from an unknown term, but not from a damaged one
            self._encodings = convert_encodings([term.strip() for term in declared.split("\\")])
        except (LookupError, ValueError) as exc:
            raise InvalidInstance(
                f"Specific Character Set {declared!r:.80} is unusable: {exc}"
            ) from exc

    def __call__(self, tag: int, delimiters: frozenset[int] = frozenset()) -> str | None:
        raw = self._values.get(tag)
        if raw is None:
            return None
        return _clip(
            tag, decode_bytes(raw, self._encodings, set(delimiters)).strip(" \x00") or None
        )


def parse_instance(
    encoded: Encoded, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str
) -> InstanceRecord:
    """Read the record of a C-STORE data set; `sop_*` come from the C-STORE request."""
    if not encoded:
        raise InvalidInstance("data set is empty")
    data = inflate(encoded) if transfer_syntax == DeflatedExplicitVRLittleEndian else encoded
    values = walk(
        data, transfer_syntax == ImplicitVRLittleEndian, transfer_syntax != ExplicitVRBigEndian
    )
    record_class = _uid(values, SOP_CLASS_UID, "SOPClassUID")
    record_instance = _uid(values, SOP_INSTANCE_UID, "SOPInstanceUID")
    if record_class != sop_class_uid or record_instance != sop_instance_uid:
        raise InvalidInstance(
            "SOP Class or Instance UID in the data set differs from the C-STORE request",
            Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if record_class in PIXEL_DATA_REQUIRED and PIXEL_DATA_PRESENT not in values:
        raise InvalidInstance(
            "image data set has no pixel data", Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        )
    text = _Text(values)
    return InstanceRecord(
        sop_class_uid=record_class,
        sop_instance_uid=record_instance,
        study_instance_uid=_uid(values, STUDY_INSTANCE_UID, "StudyInstanceUID"),
        series_instance_uid=_uid(values, SERIES_INSTANCE_UID, "SeriesInstanceUID"),
        transfer_syntax_uid=Uid(str(transfer_syntax)),
        modality=_ascii(values, MODALITY),
        series_number=_integer(values, SERIES_NUMBER),
        instance_number=_integer(values, INSTANCE_NUMBER),
        number_of_frames=_integer(values, NUMBER_OF_FRAMES),
        images_in_acquisition=_integer(values, IMAGES_IN_ACQUISITION),
        body_part_examined=_ascii(values, BODY_PART_EXAMINED),
        series_description=text(SERIES_DESCRIPTION),
        study_description=text(STUDY_DESCRIPTION),
        study_date=_ascii(values, STUDY_DATE),
        patient=PatientIdentity(
            patient_id=text(PATIENT_ID),
            patient_name=_person_name(text(PATIENT_NAME, PN_DELIMITERS)),
            patient_birth_date=_ascii(values, PATIENT_BIRTH_DATE),
            accession_number=text(ACCESSION_NUMBER),
        ),
    )
