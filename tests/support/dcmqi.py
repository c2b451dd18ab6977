"""dcmqi (the converter 3D Slicer and Kaapana use), installed by scripts/test into .venv-tools:
a SEG read back into one label map of segment numbers, and a TID 1500 SR into its JSON."""

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from tests.support.services import missing_service

BIN = Path(__file__).resolve().parents[2] / ".venv-tools" / "bin"
_TYPES = {"short": np.int16, "unsigned char": np.uint8, "unsigned short": np.uint16}


def _tool(name: str) -> Path:
    tool = BIN / name
    if not tool.exists():
        missing_service(f"dcmqi's {name} (scripts/test installs it into .venv-tools)")
    return tool


def _nrrd(path: Path) -> NDArray[np.integer]:
    """A gzip-encoded NRRD volume as (slice, row, column)."""
    raw = path.read_bytes()
    header, _, body = raw.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in header.decode().splitlines()[1:] if ": " in line)
    assert fields["encoding"] == "gzip", fields
    assert fields.get("endian", "little") == "little", fields  # none for one-byte types
    sizes = [int(size) for size in fields["sizes"].split()]
    data = np.frombuffer(gzip.decompress(body), dtype=_TYPES[fields["type"]])
    return data.reshape(sizes[::-1])


def seg_labels(seg: Path, work: Path, tracking_uids: list[str]) -> NDArray[np.uint8]:
    """The SEG as dcmqi reads it: each voxel the 1-based index in `tracking_uids` of the
    segment dcmqi puts there, on the SEG's grid as dcmqi orders it (slices by position)."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [_tool("segimage2itkimage"), "--inputDICOM", seg, "--outputDirectory", work,
         "--outputType", "nrrd"],
        check=True, capture_output=True,
    )  # fmt: skip
    meta = json.loads((work / "meta.json").read_text())
    labels: NDArray[np.uint8] | None = None
    for index, segments in enumerate(meta["segmentAttributes"], start=1):
        volume = _nrrd(work / f"{index}.nrrd")
        if labels is None:
            labels = np.zeros(volume.shape, dtype=np.uint8)
        for segment in segments:
            number = tracking_uids.index(segment["TrackingUniqueIdentifier"]) + 1
            labels[volume == segment["labelID"]] = number
    assert labels is not None, "dcmqi found no segment"
    return labels


def sr_json(sr: Path, work: Path) -> dict[str, object]:
    """The TID 1500 SR as dcmqi's tid1500reader reads it."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "sr.json"
    subprocess.run(
        [_tool("tid1500reader"), "--inputDICOM", sr, "--outputMetadata", out],
        check=True, capture_output=True,
    )  # fmt: skip
    return dict(json.loads(out.read_text()))
