"""The gate before the outbox: each result is encoded, read back strictly and checked against
its sources. An object that fails is never sent; the job fails with the reason.

The checks are the ones a receiving PACS or viewer would trip over: every value readable under
pydicom's strict validation, the identifying attributes copied from the sources unchanged, the
pixel data decodable to the declared number of frames, and the UIDs well formed.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels.utils import iter_pixels

from appliance.domain.findings import SegmentationType
from appliance.domain.uids import InvalidUid, parse_uid

_COPIED_FROM_SOURCE = ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber")
_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


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


def check(result: Dataset, sources: Sequence[Dataset]) -> CheckedResult:
    """Encode `result`, read it back strictly, and compare it with its `sources`."""
    label = f"{result.get('Modality', '?')} {result.get('SOPInstanceUID', '?')}"
    buffer = BytesIO()
    try:
        dcmwrite(buffer, result, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidResult(f"{label} cannot be encoded: {exc}") from exc
    encoded = buffer.getvalue()
    try:
        with config.strict_reading():
            read = dcmread(BytesIO(encoded))
            for element in read.iterall():
                _ = element.value
    except Exception as exc:  # any failure to read back is a reason to refuse
        raise InvalidResult(f"{label} does not read back strictly: {exc}") from exc
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
        declared = int(read.get("NumberOfFrames", 1))
        if not read.file_meta.TransferSyntaxUID.is_compressed:
            bits = declared * read.Rows * read.Columns * read.SamplesPerPixel * read.BitsAllocated
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
    return CheckedResult(
        str(read.SOPClassUID), str(read.SOPInstanceUID), str(read.Modality), encoded
    )


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
