"""Hostile and broken DICOM: hypothesis strategies that mutate real instances, and the two
places they are fed to. Shared by tests/integration/test_fuzz.py (hundreds of cases) and
bench/fuzz.py (ten thousand and more).

- Through a real association to `appliance listen`, as a PACS would send them: every C-STORE
  gets a status, every refusal has an audit row with its reason, the listener stays up.
- Through the pipelines' entry points, as a worker would meet what the listener stored:
  `load_series` for CT, `decode_cine` for ultrasound. A case either decodes or fails with one
  of the errors a job records as its failure (`app.job_runner.JOB_FAILURES`); anything
  else would be a worker crash, and is a finding.

Mutations are either structural (an element removed, or given an extreme or mistyped value,
on a data set pydicom can still write) or raw (bytes flipped, inserted, cut, or a length field
overwritten in the encoded data set), on seeds that cover the appliance's inputs: a CT slice,
a JPEG baseline YBR ultrasound cine, a palette colour image and an RGB image.
"""

import io
import struct
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pynetdicom.association import Association

from appliance.app.job_runner import JOB_FAILURES
from appliance.dicom.spool import data_set_of
from appliance.inference.ct import load_series
from appliance.inference.ultrasound import decode_cine
from tests.support.datasets import SeriesSpec, ct_slice, new_series
from tests.support.scu import associate, store

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"

REAL_FILES = ("examples_ybr_color.dcm", "examples_palette.dcm", "examples_rgb_color.dcm")
# Values that have broken DICOM readers: empty, zero, negative, huge, wrong type, odd bytes.
EXTREMES: tuple[object, ...] = (
    "",
    0,
    -1,
    1,
    65535,
    2**31 - 1,
    "0\\0",
    "1e308",
    "NaN",
    "-0",
    "1\\0\\0\\0\\1\\0",
    "0\\0\\0\\0\\0\\0",
    "A" * 70,
    "\x00\x00",
    "é",
)
# Elements the pipelines and the listener read: their damage is worth most of the tries.
TARGETS = (
    "SOPInstanceUID",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "PixelData",
    "SequenceOfUltrasoundRegions",
    "RedPaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "SpecificCharacterSet",
    "ImagesInAcquisition",
)


@dataclass(frozen=True)
class Seed:
    name: str
    dataset: Dataset
    ct: bool  # fed to load_series with two intact neighbours; otherwise to decode_cine


@cache
def _ct_series() -> SeriesSpec:
    return new_series(3)


@cache
def seeds() -> tuple[Seed, ...]:
    found = [Seed("ct_slice", ct_slice(_ct_series(), 1), ct=True)]
    for name in REAL_FILES:
        path = get_testdata_file(name, download=False)
        assert path is not None, f"{name} is not in pydicom's wheel"
        found.append(Seed(name, dcmread(path), ct=False))
    return tuple(found)


@cache
def ct_neighbours() -> tuple[Dataset, Dataset]:
    """Two intact slices of the CT seed's series, so a mutated middle slice meets the whole
    volume path (geometry, spacing, pixel decoding) rather than "too few slices"."""
    return ct_slice(_ct_series(), 0), ct_slice(_ct_series(), 2)


@dataclass(frozen=True)
class Case:
    seed: Seed
    mutation: str
    part10: bytes  # the whole file, its File Meta intact so it can be sent and read

    def __repr__(self) -> str:  # what a failing test prints: the seed and the mutation
        return f"Case({self.seed.name}: {self.mutation})"


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _fresh(draw: st.DrawFn, seed: Seed) -> Dataset:
    """A copy of the seed under a SOP Instance UID of its own, drawn so that hypothesis can
    replay the case."""
    dataset = dcmread(io.BytesIO(_encode(seed.dataset)))
    uid = f"2.25.{draw(st.integers(10**37, 2**128))}"
    dataset.SOPInstanceUID = uid
    dataset.file_meta.MediaStorageSOPInstanceUID = uid
    return dataset


@st.composite
def structural(draw: st.DrawFn, seed: Seed) -> tuple[str, bytes]:
    dataset = _fresh(draw, seed)
    present = [keyword for keyword in TARGETS if keyword in dataset]
    keyword = draw(st.sampled_from(present))
    if draw(st.booleans()):
        del dataset[keyword]
        return f"delete {keyword}", _encode(dataset)
    value = draw(st.sampled_from(EXTREMES) | st.binary(max_size=16) | st.integers(-(2**40), 2**40))
    element = dataset[keyword]
    try:
        element.value = value
        encoded = _encode(dataset)
    except Exception:  # noqa: BLE001 - pydicom refuses to write it: the raw value as UN
        raw = value if isinstance(value, bytes) else str(value).encode("latin-1", "replace")
        try:
            dataset[keyword] = DataElement(element.tag, "UN", raw + b"\x00" * (len(raw) % 2))
            encoded = _encode(dataset)
        except Exception:  # noqa: BLE001 - not even that (a character set it must understand)
            del dataset[keyword]
            return f"delete {keyword}", _encode(dataset)
    return f"set {keyword}={value!r:.40}", encoded


@st.composite
def raw(draw: st.DrawFn, seed: Seed) -> tuple[str, bytes]:
    part10 = _encode(_fresh(draw, seed))
    body = data_set_of(part10)
    meta = part10[: len(part10) - len(body)]
    data = bytearray(body)
    operation = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if operation == "flip":
        for _ in range(draw(st.integers(1, 8))):
            spot = draw(st.integers(0, len(data) - 1))
            data[spot] ^= draw(st.integers(1, 255))
    elif operation == "cut":
        del data[at:]
    elif operation == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    else:  # a length field somewhere: 16-bit (short VRs) or 32-bit (long VRs, undefined)
        width = draw(st.sampled_from([2, 4]))
        value = draw(st.sampled_from([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, len(data) + 1]))
        packed = struct.pack("<H" if width == 2 else "<L", value & (0xFFFF if width == 2 else ~0))
        data[at : at + width] = packed
    return f"raw {operation} at {at}", meta + bytes(data)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    seed = draw(st.sampled_from(seeds()))
    mutation, part10 = draw(structural(seed) if draw(st.booleans()) else raw(seed))
    return Case(seed, mutation, part10)


@dataclass
class PipelineTally:
    """What the pipelines' entry points made of the cases."""

    decoded: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # by error type: clear failures
    crashes: list[str] = field(default_factory=list)  # anything else: must stay empty

    @property
    def cases(self) -> int:
        return self.decoded + sum(self.refused.values()) + len(self.crashes)


def feed_pipeline(case: Case, directory: Path, tally: PipelineTally) -> None:
    """Decode `case` as a worker would, recording a clear failure or a crash."""
    path = directory / "case.dcm"
    path.write_bytes(case.part10)
    try:
        if case.seed.ct:
            before, after = ct_neighbours()
            paths = [directory / "before.dcm", path, directory / "after.dcm"]
            before.save_as(paths[0], enforce_file_format=True)
            after.save_as(paths[2], enforce_file_format=True)
            load_series(paths)
        else:
            decode_cine(path)
    except JOB_FAILURES as exc:
        tally.refused[type(exc).__name__] += 1
    except Exception as exc:  # noqa: BLE001 - this is what the fuzzer looks for
        tally.crashes.append(f"{case.seed.name}: {case.mutation}: {type(exc).__name__}: {exc}")
    else:
        tally.decoded += 1


@dataclass
class AssociationTally:
    """What the listener answered to the cases sent over real associations."""

    statuses: Counter[int] = field(default_factory=Counter)
    associations: int = 0
    unsendable: int = 0  # the sender's own library refused to read them: never sent
    unanswered: list[str] = field(default_factory=list)  # no status came back: must stay empty

    @property
    def cases(self) -> int:
        return sum(self.statuses.values()) + self.unsendable + len(self.unanswered)

    @property
    def refused(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 0)


SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
)


class Sender:
    """One association at a time to the listener, renewed when it ends, so a long run of
    cases does not depend on one association surviving all of them."""

    def __init__(self, port: int, directory: Path, calling: str, per_association: int) -> None:
        self._port = port
        self._path = directory / "sent.dcm"
        self._calling = calling
        self._per_association = per_association
        self._assoc: Association | None = None
        self._sent = 0

    def send(self, case: Case, tally: AssociationTally) -> None:
        if self._assoc is None or not self._assoc.is_established:
            self._open(tally)
        assert self._assoc is not None
        self._path.write_bytes(case.part10)
        try:
            status = store(self._assoc, self._path)
        except (RuntimeError, OSError, ValueError, TypeError) as exc:
            if self._assoc.is_established:  # pynetdicom could not build a request from it
                tally.unsendable += 1
                return
            tally.unanswered.append(f"{case.seed.name}: {case.mutation}: {exc}")
            self.close()
            return
        if status is None:
            tally.unanswered.append(f"{case.seed.name}: {case.mutation}: no response")
            self.close()
            return
        tally.statuses[status] += 1
        self._sent += 1
        if self._sent % self._per_association == 0:
            self.close()

    def _open(self, tally: AssociationTally) -> None:
        contexts: list[tuple[str, list[str] | None]] = [  # one per syntax: each is accepted
            (uid, [syntax])
            for uid in SOP_CLASSES
            for syntax in (EXPLICIT_LITTLE, "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5")
        ]
        self._assoc = associate(self._port, contexts, self._calling)
        if not self._assoc.is_established:
            raise AssertionError("the listener refused a fresh association")
        tally.associations += 1

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None
