"""A real MR volume as a DICOM MR series: the MNI152 2009a T1 template that ships inside the
nilearn package (installed in the importers venv), written slice by slice with the geometry its
NIfTI affine gives, so that the appliance and deepbet's own runner read the same voxels."""

import json
import subprocess
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.uid import MRImageStorage, generate_uid

from appliance.domain.geometry import VolumeGeometry
from appliance.phantoms.dicom import Patient, base_dataset
from tests.support.nnunet import require_importer_venv

REFERENCE = Path(__file__).with_name("deepbet_reference.py")
LPS = np.diag([-1.0, -1.0, 1.0])  # RAS to DICOM's patient axes and back


def write_mr_series(
    volume: NDArray[np.floating], ras_affine: NDArray[np.float64], directory: Path
) -> list[Path]:
    """One axial MR image per plane of the volume's third axis; columns run to the patient's
    left and rows to the back where the affine allows (as scanners write axial images)."""
    directory.mkdir(parents=True, exist_ok=True)
    directions = LPS @ ras_affine[:3, :3]
    spacing = np.linalg.norm(directions, axis=0)
    flips = [directions[int(np.argmax(np.abs(directions[:, a]))), a] < 0 for a in (0, 1)]
    oriented = np.flip(volume, axis=tuple(a for a in (0, 1) if flips[a]))
    row_direction = directions[:, 0] / spacing[0] * (-1 if flips[0] else 1)
    column_direction = directions[:, 1] / spacing[1] * (-1 if flips[1] else 1)
    first = [volume.shape[a] - 1 if flips[a] else 0 for a in (0, 1)]
    stored = np.round(oriented / float(oriented.max()) * 4095).astype(np.uint16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    patient = Patient("MNI152^Template", "MNI152-2009A")
    paths = []
    for k in range(volume.shape[2]):
        position = LPS @ (ras_affine @ np.array([*first, k, 1.0]))[:3]
        ds = base_dataset(MRImageStorage, study, series, "MR", patient)
        ds.Manufacturer = "McConnell Brain Imaging Centre (template)"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.StudyDescription = "MR BRAIN (MNI152 2009a template)"
        ds.SeriesDescription = "T1 MNI152 2009a symmetric"
        ds.BodyPartExamined = "HEAD"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = 22, 9.2, 1
        ds.MagneticFieldStrength = 1.5
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(float(v), 6) + 0.0 for v in position]
        ds.ImageOrientationPatient = [
            round(float(v), 6) + 0.0 for v in (*row_direction, *column_direction)
        ]
        ds.PixelSpacing = [round(float(spacing[1]), 6), round(float(spacing[0]), 6)]
        ds.SliceThickness = round(float(spacing[2]), 6)
        plane = np.ascontiguousarray(stored[:, :, k].T)  # rows along the second axis
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = plane.tobytes()
        path = directory / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ras_affine(geometry: VolumeGeometry) -> NDArray[np.float64]:
    """The NIfTI affine of the appliance's volume array (slice, row, column)."""
    affine = np.eye(4)
    directions = (geometry.normal, geometry.column_direction, geometry.row_direction)
    for axis, (direction, size) in enumerate(zip(directions, geometry.spacing, strict=True)):
        affine[:3, axis] = LPS @ (np.array(direction) * size)
    affine[:3, 3] = LPS @ np.array(geometry.origin)
    return affine


def mni_template(directory: Path) -> dict[str, Path]:
    """The template's T1 volume, its affine and the brain mask from its own grey- and
    white-matter maps, exported by the importers venv (which has nilearn) as .npy files."""
    return _reference(directory, {"template": str(directory)})


def deepbet_masks(volumes: list[tuple[Path, Path]], directory: Path) -> list[NDArray[np.bool_]]:
    """deepbet's own masks (`BrainExtraction.run`) of (volume .npy, affine .npy) pairs."""
    cases = [{"volume": str(v), "affine": str(a)} for v, a in volumes]
    found = _reference(directory, {"deepbet": cases})
    return [np.load(found[f"mask_{index}"]) for index in range(len(cases))]


def _reference(directory: Path, request: dict[str, object]) -> dict[str, Path]:
    python = require_importer_venv()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "request.json").write_text(json.dumps({**request, "output": str(directory)}))
    done = subprocess.run(
        [str(python), str(REFERENCE), str(directory / "request.json")],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {key: Path(value) for key, value in json.loads(done.stdout).items()}
