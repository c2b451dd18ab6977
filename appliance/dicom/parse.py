"""Parse a received dataset, once, into an `InstanceRecord` (PS3.5 section 7 data set encoding).

The encoded bytes are stored as received; parsing only reads the attributes the appliance needs
and checks that the encoding is whole: every top-level element must end inside the data and the
last one exactly at its end, so a truncated transfer is refused instead of stored.
"""

import struct
import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from appliance.dicom.status import StoreStatus
from appliance.domain.instance import InstanceRecord, PatientIdentity
from appliance.domain.uids import InvalidUid, Uid, parse_uid

_UNDEFINED_LENGTH = 0xFFFFFFFF


class InvalidInstance(ValueError):
    """A dataset the appliance will not store, with the C-STORE status to answer."""

    def __init__(self, reason: str, status: StoreStatus = StoreStatus.CANNOT_UNDERSTAND) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def inflate(data: bytes) -> bytes:
    """Undo the Deflated Explicit VR Little Endian transfer syntax (raw deflate, RFC 1951)."""
    try:
        return zlib.decompress(data, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise InvalidInstance(f"deflated data set does not inflate: {exc}") from exc


_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
)
_ITEM_GROUP = 0xFFFE
_DELIMITERS = frozenset({0xE00D, 0xE0DD})  # item and sequence delimitation items
_PIXEL_DATA = 0x7FE00010


def check_encoding_whole(data: bytes, implicit: bool, little: bool) -> None:
    """Walk the element headers of `data` and raise `InvalidInstance` if it is not whole.

    Defined lengths are skipped, undefined lengths (sequences, items, encapsulated pixel data)
    are followed to their delimiters, so a transfer cut anywhere is caught without decoding.
    """
    end = _walk(data, 0, implicit, little, nested=False)
    if end != len(data):
        raise InvalidInstance(f"data set has {len(data) - end} undecodable trailing bytes")


def _walk(data: bytes, pos: int, implicit: bool, little: bool, nested: bool) -> int:
    order = "<" if little else ">"
    size = len(data)
    while pos < size:
        if pos + 8 > size:
            raise InvalidInstance(f"data set is truncated in an element header at byte {pos}")
        group, element = struct.unpack_from(order + "HH", data, pos)
        vr = b""
        if group == _ITEM_GROUP:
            (length,) = struct.unpack_from(order + "L", data, pos + 4)
            header = 8
            if element in _DELIMITERS:
                if not nested:
                    raise InvalidInstance(f"unexpected delimiter at byte {pos}")
                return pos + header
        elif implicit:
            (length,) = struct.unpack_from(order + "L", data, pos + 4)
            header = 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > size:
                    raise InvalidInstance(
                        f"data set is truncated in an element header at byte {pos}"
                    )
                (length,) = struct.unpack_from(order + "L", data, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from(order + "H", data, pos + 6)
                header = 8
        pos += header
        if length == _UNDEFINED_LENGTH:
            # Undefined-length UN content is always implicit VR little endian (PS3.5 6.2.2).
            inner_implicit = implicit or vr == b"UN"
            pos = _walk(data, pos, inner_implicit, little or vr == b"UN", nested=True)
        elif pos + length > size:
            raise InvalidInstance(
                f"data set is truncated: an element needs {pos + length} bytes, received {size}"
            )
        else:
            pos += length
    if nested:
        raise InvalidInstance("data set is truncated before a sequence delimiter")
    return pos


def _before_pixel_data(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) >= _PIXEL_DATA


def _decode(encoded: bytes, transfer_syntax: str) -> Dataset:
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    data = inflate(encoded) if transfer_syntax == DeflatedExplicitVRLittleEndian else encoded
    check_encoding_whole(data, implicit, little)
    try:
        return read_dataset(BytesIO(data), implicit, little, stop_when=_before_pixel_data)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError) as exc:
        raise InvalidInstance(f"data set cannot be decoded: {exc.__class__.__name__}") from exc


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _integer(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _uid(dataset: Dataset, keyword: str) -> Uid:
    try:
        return parse_uid(dataset.get(keyword), keyword)
    except InvalidUid as exc:
        raise InvalidInstance(str(exc)) from exc


def parse_instance(
    encoded: bytes, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str
) -> InstanceRecord:
    """Read the record of a C-STORE data set; `sop_*` come from the C-STORE request."""
    if not encoded:
        raise InvalidInstance("data set is empty")
    dataset = _decode(encoded, transfer_syntax)
    record_class = _uid(dataset, "SOPClassUID")
    record_instance = _uid(dataset, "SOPInstanceUID")
    if record_class != sop_class_uid or record_instance != sop_instance_uid:
        raise InvalidInstance(
            "SOP Class or Instance UID in the data set differs from the C-STORE request",
            StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        )
    return InstanceRecord(
        sop_class_uid=record_class,
        sop_instance_uid=record_instance,
        study_instance_uid=_uid(dataset, "StudyInstanceUID"),
        series_instance_uid=_uid(dataset, "SeriesInstanceUID"),
        transfer_syntax_uid=Uid(str(transfer_syntax)),
        modality=_text(dataset, "Modality"),
        series_number=_integer(dataset, "SeriesNumber"),
        instance_number=_integer(dataset, "InstanceNumber"),
        number_of_frames=_integer(dataset, "NumberOfFrames"),
        images_in_acquisition=_integer(dataset, "ImagesInAcquisition"),
        body_part_examined=_text(dataset, "BodyPartExamined"),
        series_description=_text(dataset, "SeriesDescription"),
        study_description=_text(dataset, "StudyDescription"),
        study_date=_text(dataset, "StudyDate"),
        patient=PatientIdentity(
            patient_id=_text(dataset, "PatientID"),
            patient_name=_text(dataset, "PatientName"),
            patient_birth_date=_text(dataset, "PatientBirthDate"),
            accession_number=_text(dataset, "AccessionNumber"),
        ),
    )
