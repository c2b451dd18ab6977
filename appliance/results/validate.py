"""The gate before the outbox: each result is validated, encoded, and the encoding proved to
be what was validated. An object that fails is never sent; the job fails with the reason.

The checks are the ones a receiving PACS or viewer would trip over: every value valid for its
VR under pydicom's strict rules, the identifying attributes copied from the sources
unchanged, the pixel data decodable to the declared number of frames, and the UIDs well
formed. What is validated is what is sent, without parsing every value twice:

1. in memory, every element's value is checked against its VR with the validators pydicom's
   strict reading applies, and every text a character set must carry is proved to encode
   without loss;
2. the data set is written once;
3. the written bytes are walked header by header (`element_tree`): every length inside its
   parent, every sequence and item closed, nothing left over, and the tree of tags, VRs and
   items must be the validated one, element for element. Their top level is read back for
   the identifiers and UIDs, and the pixel data decoded frame by frame.

A CT SEG has tens of thousands of elements; reading each back strictly took longer than
encoding the object.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom import config, dcmread
from pydicom.charset import convert_encodings, decode_bytes, encode_string, python_encoding
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr_element, dcmwrite
from pydicom.multival import MultiValue
from pydicom.pixels.utils import iter_pixels
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName, validate_value

from appliance.domain.encoding import ITEM, MalformedEncoding, element_tree
from appliance.domain.findings import SegmentationType
from appliance.domain.uids import InvalidUid, parse_uid

_COPIED_FROM_SOURCE = ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber")
_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_CHARACTER_SET_TEXT = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})  # PS3.5 6.1.2.3
# The control characters each text VR may hold (PS3.5 6.2); ESC only where the character set
# has code extensions (ISO 2022) to announce.
_FORMAT_CONTROLS = {"ST": "\t\n\f\r", "LT": "\t\n\f\r", "UT": "\t\n\f\r"}
_PERSON_NAME_DELIMITERS = frozenset({0x5E, 0x3D})  # '^' and '=' end ISO 2022 code extensions
_CONTROLS = frozenset(chr(code) for code in (*range(0x20), 0x7F))
_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
     "UR", "UT"}
)  # fmt: skip
_SINGLE_VALUED = frozenset({"LT", "ST", "UR", "UT"})  # a backslash is text, not a delimiter
_PREAMBLE_AND_PREFIX = 132


class InvalidResult(ValueError):
    """A result object that must not be sent; the message says why."""


@dataclass(frozen=True)
class CheckedResult:
    """A result that passed the gate, as the bytes to send (a Part 10 file)."""

    sop_class_uid: str
    sop_instance_uid: str
    modality: str
    encoded: bytes
    form: SegmentationType | None = None  # the SEG form it is or refers to; None: any


Tree = list[tuple[int, int, str]]


def check(result: Dataset, sources: Sequence[Dataset]) -> CheckedResult:
    """Validate `result`, encode it, prove the encoding is what was validated, and compare it
    with its `sources`."""
    label = f"{result.get('Modality', '?')} {result.get('SOPInstanceUID', '?')}"
    validated = _validated_tree(result, label)
    buffer = BytesIO()
    try:
        dcmwrite(buffer, result, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, UnicodeError) as exc:
        raise InvalidResult(f"{label} cannot be encoded: {exc}") from exc
    encoded = buffer.getvalue()
    read = dcmread(BytesIO(encoded))  # the top level only; sequences stay unparsed
    syntax = read.file_meta.TransferSyntaxUID
    if syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian) or syntax.is_deflated:
        raise InvalidResult(f"{label}: the gate sends explicit VR little endian, not {syntax}")
    try:
        written = element_tree(encoded, _PREAMBLE_AND_PREFIX + _meta_length(encoded))
    except MalformedEncoding as exc:
        raise InvalidResult(f"{label}: the written bytes do not parse: {exc}") from exc
    if written != validated:
        raise InvalidResult(f"{label}: the written elements differ from the validated ones")
    for keyword in _UIDS:
        try:
            parse_uid(read.get(keyword), keyword)
        except InvalidUid as exc:
            raise InvalidResult(f"{label}: {exc}") from exc
    for keyword in _COPIED_FROM_SOURCE:
        expected = {str(source.get(keyword, "")) for source in sources}
        if len(expected) == 1 and str(read.get(keyword, "")) not in expected:
            raise InvalidResult(f"{label}: {keyword} differs from its source images")
    if "PixelData" in read:
        _check_pixels(read, encoded, label)
    return CheckedResult(
        str(read.SOPClassUID), str(read.SOPInstanceUID), str(read.Modality), encoded
    )


def _validated_tree(result: Dataset, label: str) -> Tree:
    """The tree of `result`'s elements as the writer will encode them, each value checked
    strictly against its VR on the way."""
    declared = result.get("SpecificCharacterSet")
    terms = [declared] if isinstance(declared, str) else list(declared or [])
    unknown = [term for term in terms if term and term not in python_encoding]
    if unknown:
        raise InvalidResult(f"{label}: Specific Character Set has undefined terms {unknown}")
    try:
        encodings = convert_encodings(declared)
    except (LookupError, ValueError) as exc:
        raise InvalidResult(f"{label}: Specific Character Set is unusable: {exc}") from exc
    extended = any("2022" in str(term) for term in terms)
    tree: Tree = []
    _walk(result, [result], _Text(encodings, extended), tree, label)
    return tree


@dataclass(frozen=True)
class _Text:
    """How a data set's text is encoded: its Python encodings, and whether it uses ISO 2022
    code extensions (escape sequences)."""

    encodings: list[str]
    extended: bool


def _walk(dataset: Dataset, ancestors: list[Dataset], text: _Text, tree: Tree, label: str) -> None:
    """Validate `dataset` (`ancestors`: it and the data sets it lies in, nearest first) into
    `tree`. Its elements are left converted and their VRs resolved, as the writer would
    leave them, and the data set is marked as encoded so: the writer then does not redo it
    for every item at every level of nesting (a fifth of writing a BINARY SEG)."""
    depth = len(ancestors) - 1
    for tag in sorted(dataset.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # group lengths are retired and not written (PS3.5 7.2)
        try:
            raw = dataset.get_item(tag)
            if isinstance(raw, RawDataElement) and raw.VR in _STRING_VRS and raw.value:
                _validate_raw(raw, text, label)
            element = dataset[tag]
            if " or " in element.VR:  # resolved as the writer resolves it
                correct_ambiguous_vr_element(element, dataset, True, ancestors)
        except InvalidResult:
            raise
        except Exception as exc:  # a value that cannot even be converted is refused
            raise InvalidResult(f"{label}: {tag} cannot be read: {type(exc).__name__}") from exc
        tree.append((depth, int(tag), element.VR))
        if element.VR == "SQ":
            for item in element.value:
                tree.append((depth + 1, ITEM, ""))
                _walk(item, [item, *ancestors], text, tree, label)
            continue
        name = element.keyword or str(element.tag)
        for value in _values(element):
            _validate(element.VR, name, _as_written(element.VR, value), text, label)
    # The writer skips its conversion and VR correction where the data set says it was read
    # as it is to be written (explicit VR little endian, its own character set: pydicom keeps
    # that set in `_character_set`); any other transfer syntax still gets both.
    dataset.set_original_encoding(False, True, dataset._character_set)


def _values(element: DataElement) -> Iterator[object]:
    value = element.value
    if isinstance(value, (MultiValue, list, tuple)):
        yield from value
    elif value is not None:
        yield value


def _as_written(vr: str, value: object) -> object:
    """The text the writer writes for a DS, IS or PN value; other values as they are."""
    if vr in ("DS", "IS"):
        return value.original_string if hasattr(value, "original_string") else str(value)
    return str(value) if isinstance(value, PersonName) else value


def _validate_raw(raw: RawDataElement, text: _Text, label: str) -> None:
    """A value still in its encoded form (copied from a file) as strict reading checks it:
    before conversion, which would quietly strip or drop what is invalid."""
    name, vr = keyword_for_tag(raw.tag) or str(raw.tag), str(raw.VR)
    assert raw.value is not None
    if vr in _CHARACTER_SET_TEXT:
        delimiters = set(_PERSON_NAME_DELIMITERS) if vr == "PN" else set()
        decoded = decode_bytes(raw.value, text.encodings, delimiters)
    else:
        decoded = raw.value.decode("latin-1")
    decoded = decoded.rstrip(" \x00")
    values = [decoded] if vr in _SINGLE_VALUED else decoded.split("\\")
    for value in values:
        _validate(vr, name, value, text, label)


def _validate(vr: str, name: str, written: object, text: _Text, label: str) -> None:
    """A value, as written, strictly against its VR; the value itself stays out of the
    reason, which is recorded and may be logged."""
    try:
        validate_value(vr, written, config.RAISE)
    except ValueError as exc:
        raise InvalidResult(f"{label}: {name} is not a valid {vr}") from exc
    if vr not in _CHARACTER_SET_TEXT or not isinstance(written, str):
        return
    allowed = _FORMAT_CONTROLS.get(vr, "") + ("\x1b" if text.extended else "")
    if not written.isprintable() and any(c in _CONTROLS and c not in allowed for c in written):
        raise InvalidResult(f"{label}: {name} holds control characters its VR does not allow")
    if not written.isascii():
        delimiters = set(_PERSON_NAME_DELIMITERS) if vr == "PN" else set()
        encoded = encode_string(written, text.encodings)
        if decode_bytes(encoded, text.encodings, delimiters) != written:
            raise InvalidResult(f"{label}: {name} cannot be carried by its character set")


def _meta_length(encoded: bytes) -> int:
    """The length of the file meta information group, header included (PS3.10 7.1)."""
    value = encoded[_PREAMBLE_AND_PREFIX + 8 : _PREAMBLE_AND_PREFIX + 12]
    return 12 + int.from_bytes(value, "little")


def _check_pixels(read: Dataset, encoded: bytes, label: str) -> None:
    try:
        declared = int(read.get("NumberOfFrames", 1))
        shape = (read.Rows, read.Columns, read.SamplesPerPixel, read.BitsAllocated)
        bits = declared * int(np.prod([int(value) for value in shape]))
    except (TypeError, ValueError, AttributeError) as exc:  # absent, or several values
        raise InvalidResult(f"{label}: the pixel data's dimensions are unusable: {exc}") from exc
    if not read.file_meta.TransferSyntaxUID.is_compressed:
        expected = (bits + 7) // 8
        if len(read.PixelData) not in (expected, expected + expected % 2):
            raise InvalidResult(
                f"{label}: pixel data is {len(read.PixelData)} bytes, "
                f"{declared} frames need {expected}"
            )
    try:  # frame by frame: a CT SEG can hold thousands of frames
        decoded = _decoded_frames(read, encoded)
    except Exception as exc:  # undecodable pixels are a reason to refuse
        raise InvalidResult(f"{label}: pixel data does not decode: {exc}") from exc
    if decoded != declared:
        raise InvalidResult(f"{label}: pixel data holds {decoded} of {declared} frames")


def _decoded_frames(read: Dataset, encoded: bytes) -> int:
    """How many frames decode, one at a time. Uncompressed 1-bit frames are packed with no
    padding between them, so a frame whose bits are not a multiple of 8 starts inside a
    byte: pydicom 3.0's `iter_pixels` cannot cut those, and they are unpacked here."""
    if read.BitsAllocated != 1 or read.file_meta.TransferSyntaxUID.is_compressed:
        return sum(1 for _ in iter_pixels(BytesIO(encoded)))
    packed = np.frombuffer(read.PixelData, dtype=np.uint8)
    size = int(read.Rows) * int(read.Columns) * int(read.SamplesPerPixel)
    decoded = 0
    for frame in range(int(read.get("NumberOfFrames", 1))):
        first = frame * size
        chunk = packed[first // 8 : (first + size + 7) // 8]
        bits = np.unpackbits(chunk, bitorder="little")[first % 8 : first % 8 + size]
        if bits.size != size:
            raise ValueError(f"frame {frame + 1} is cut short")
        decoded += 1
    return decoded
