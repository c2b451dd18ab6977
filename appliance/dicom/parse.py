"""Parse a received data set, once, into an `InstanceRecord` (PS3.5 section 7 encoding).

The encoded bytes are stored exactly as received, so parsing only has to check that the encoding
is whole and read the handful of attributes the appliance needs. One walk over the element
headers does both: defined lengths are skipped, undefined lengths (sequences, items,
encapsulated pixel data) are followed to their delimiters, every element must end inside the
data and the last one exactly at its end. A transfer cut anywhere is caught without decoding
pixel data, at a small fraction of a full pydicom parse.
"""

import mmap
import struct
import zlib

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from appliance.dicom.sop_classes import PIXEL_DATA_REQUIRED
from appliance.domain.instance import InstanceRecord, PatientIdentity
from appliance.domain.status import Status
from appliance.domain.uids import InvalidUid, Uid, parse_uid

_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
_ITEM_GROUP = 0xFFFE
_DELIMITERS = frozenset({0xE00D, 0xE0DD})  # item and sequence delimitation items

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

# Encoded data set bytes: in memory, or a large data set's file mapped read-only.
Encoded = bytes | mmap.mmap

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
    end = _walk(data, 0, implicit, little, values)
    if end != len(data):
        raise InvalidInstance(f"data set has {len(data) - end} undecodable trailing bytes")
    return values


def _header(data: Encoded, pos: int, implicit: bool, little: bool) -> tuple[int, bytes, int, int]:
    """The element header at `pos`: its tag, VR (empty when implicit or an item), value
    length, and where its value begins."""
    order = "<" if little else ">"
    size = len(data)
    if pos + 8 > size:
        raise InvalidInstance(f"data set is truncated in an element header at byte {pos}")
    group, element = struct.unpack_from(order + "HH", data, pos)
    if group == _ITEM_GROUP or implicit:
        (length,) = struct.unpack_from(order + "L", data, pos + 4)
        return group << 16 | element, b"", length, pos + 8
    vr = bytes(data[pos + 4 : pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > size:
            raise InvalidInstance(f"data set is truncated in an element header at byte {pos}")
        (length,) = struct.unpack_from(order + "L", data, pos + 8)
        return group << 16 | element, vr, length, pos + 12
    (length,) = struct.unpack_from(order + "H", data, pos + 6)
    return group << 16 | element, vr, length, pos + 8


def _value_end(data: Encoded, pos: int, length: int) -> int:
    if pos + length > len(data):
        raise InvalidInstance(
            f"data set is truncated: an element needs {pos + length} bytes, received {len(data)}"
        )
    return pos + length


def _walk(
    data: Encoded, pos: int, implicit: bool, little: bool, values: dict[int, bytes] | None
) -> int:
    """Walk elements from `pos`; top level when `values` is given, else inside a sequence."""
    while pos < len(data):
        tag, vr, length, start = _header(data, pos, implicit, little)
        if tag >> 16 == _ITEM_GROUP and tag & 0xFFFF in _DELIMITERS:
            if values is not None:
                raise InvalidInstance(f"unexpected delimiter at byte {pos}")
            return start
        if values is not None and tag in PIXEL_DATA_TAGS:
            values[PIXEL_DATA_PRESENT] = b""
        if length == _UNDEFINED_LENGTH:
            # Undefined-length UN content is implicit VR little endian (PS3.5 section 6.2.2).
            unknown = vr == b"UN"
            pos = _walk(data, start, implicit or unknown, little or unknown, None)
            continue
        pos = _value_end(data, start, length)
        if values is not None and tag in _WANTED:
            values[tag] = data[start:pos]
    if values is None:
        raise InvalidInstance("data set is truncated before a sequence delimiter")
    return pos


ITEM = 0xFFFEE000  # a sequence item in an element tree
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD


def element_tree(data: Encoded, start: int = 0) -> list[tuple[int, int, str]]:
    """Every element of the explicit VR little endian data set in `data` from `start`, depth
    first, as (depth, tag, VR), each sequence item opened by (depth, ITEM, ""): the structure
    the bytes hold. Every length must stay inside its parent and the data set end exactly at
    the end of `data`, else InvalidInstance."""
    tree: list[tuple[int, int, str]] = []
    end, closed_by = _tree(data, start, len(data), 0, tree)
    if closed_by is not None or end != len(data):
        raise InvalidInstance(f"data set has a stray delimiter or trailing bytes at byte {end}")
    return tree


def _tree(
    data: Encoded, pos: int, end: int, depth: int, tree: list[tuple[int, int, str]]
) -> tuple[int, int | None]:
    """Elements from `pos` up to `end` or a delimiter; where they stop, and the delimiter."""
    while pos < end:
        tag, vr, length, start = _header(data, pos, False, True)
        if tag in (_ITEM_DELIMITER, _SEQUENCE_DELIMITER):
            return start, tag
        if tag == ITEM:
            raise InvalidInstance(f"item outside a sequence at byte {pos}")
        tree.append((depth, tag, vr.decode("ascii", errors="replace")))
        undefined = length == _UNDEFINED_LENGTH
        stop = end if undefined else _value_end(data, start, length)
        if stop > end:
            raise InvalidInstance(f"element at byte {pos} runs past its parent")
        if vr == b"SQ":
            pos = _items(data, start, stop, undefined, depth + 1, tree)
        elif undefined:  # encapsulated pixel data: fragments, not elements
            pos = _items(data, start, stop, True, depth + 1, None)
        else:
            pos = stop
    return pos, None


def _items(
    data: Encoded,
    pos: int,
    end: int,
    undefined: bool,
    depth: int,
    tree: list[tuple[int, int, str]] | None,
) -> int:
    """The items of a sequence (or fragments, when `tree` is None) from `pos`: up to `end`,
    or to the sequence delimiter when its length is `undefined`."""
    while pos < end:
        tag, _, length, start = _header(data, pos, False, True)
        if tag == _SEQUENCE_DELIMITER and undefined:
            return start
        if tag != ITEM:
            raise InvalidInstance(f"expected a sequence item at byte {pos}")
        if tree is None:
            pos = _value_end(data, start, length)
            continue
        tree.append((depth, ITEM, ""))
        if length == _UNDEFINED_LENGTH:
            pos, closed_by = _tree(data, start, end, depth, tree)
            if closed_by != _ITEM_DELIMITER:
                raise InvalidInstance(f"item at byte {start} is not closed")
        else:
            stop = _value_end(data, start, length)
            pos, closed_by = _tree(data, start, stop, depth, tree)
            if closed_by is not None or pos != stop:
                raise InvalidInstance(f"item at byte {start} does not end at its length")
    if undefined:
        raise InvalidInstance("sequence is not closed by its delimiter")
    if pos != end:
        raise InvalidInstance(f"sequence runs past its length at byte {pos}")
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
