"""The gate as it was before issue 20, kept as the oracle its faster successor is held to:
write the object, then read every element back under pydicom's strict reading, compare the
identifiers with the sources and decode the pixel data. It refuses by raising; it returns
the bytes it would have sent."""

from collections.abc import Sequence
from io import BytesIO

from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from appliance.domain.uids import parse_uid
from appliance.results.validate import _decoded_frames

_COPIED_FROM_SOURCE = ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber")
_UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


class Refused(ValueError):
    """The strict read-back refused the object."""


def strict_read_back(result: Dataset, sources: Sequence[Dataset]) -> bytes:
    try:
        buffer = BytesIO()
        dcmwrite(buffer, result, enforce_file_format=True)
        encoded = buffer.getvalue()
        with config.strict_reading():
            read = dcmread(BytesIO(encoded))
            for element in read.iterall():
                _ = element.value
        for keyword in _UIDS:
            parse_uid(read.get(keyword), keyword)
    except Exception as exc:  # the old gate refused on any of these
        raise Refused(str(exc)) from exc
    for keyword in _COPIED_FROM_SOURCE:
        expected = {str(source.get(keyword, "")) for source in sources}
        if len(expected) == 1 and str(read.get(keyword, "")) not in expected:
            raise Refused(f"{keyword} differs")
    if "PixelData" in read:
        try:
            _pixels(read, encoded)
        except (TypeError, ValueError, AttributeError) as exc:  # the old gate failed the job
            raise Refused(f"pixel attributes: {exc}") from exc  # on these too, as a bug
    return encoded


def _pixels(read: Dataset, encoded: bytes) -> None:
    declared = int(read.get("NumberOfFrames", 1))
    if not read.file_meta.TransferSyntaxUID.is_compressed:
        bits = declared * read.Rows * read.Columns * read.SamplesPerPixel * read.BitsAllocated
        expected = (bits + 7) // 8
        if len(read.PixelData) not in (expected, expected + expected % 2):
            raise Refused("pixel data length")
    try:
        decoded = _decoded_frames(read, encoded)
    except Exception as exc:
        raise Refused(f"pixel data does not decode: {exc}") from exc
    if decoded != declared:
        raise Refused("frames")
