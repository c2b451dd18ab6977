"""Write phantoms as real DICOM: a CT series with realistic headers, an ultrasound cine.

Used by tests, benchmarks and the demo to exercise series handling end to end, since no real
multi-slice CT ships with any package here. `ct_slice` is the one CT image builder: the test
suite's synthetic series are made with it too.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from appliance.phantoms.ct import CTPhantom
from appliance.phantoms.ultrasound import UltrasoundCine

HU_OFFSET = 1024  # stored value = HU + 1024 (Rescale Intercept -1024)


@dataclass(frozen=True)
class Patient:
    """Who a series is of; the phantoms' own patient is plainly synthetic."""

    name: str = "Phantom^Synthetic"
    patient_id: str = "PHANTOM"
    birth_date: str = ""
    accession_number: str = ""


@dataclass(frozen=True)
class CTSeries:
    """What every slice of one CT series shares."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    spacing: tuple[float, float, float]  # (slice, row, column) in mm
    description: str
    patient: Patient = Patient()
    series_number: int = 1
    images_in_acquisition: int | None = None  # the count hint, when the scanner sends it


def base_dataset(
    sop_class: str, study_uid: str, series_uid: str, modality: str, patient: Patient
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = "O"
    ds.StudyDate = "20261124"
    ds.StudyTime = "120000"
    ds.AccessionNumber = patient.accession_number
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Manufacturer = "Appliance phantom (synthetic)"
    return ds


def ct_slice(
    series: CTSeries, index: int, position: Sequence[float], stored: NDArray[np.integer]
) -> Dataset:
    """One axial CT image: slice `index` (0-based) at `position` (LPS, mm), its stored pixel
    values `stored` (uint16, or int16 for signed pixels) with a Rescale Intercept of -1024."""
    ds = base_dataset(CTImageStorage, series.study_uid, series.series_uid, "CT", series.patient)
    dz, dy, dx = series.spacing
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDescription = "CT ABDOMEN (phantom)"
    ds.SeriesDescription = series.description
    ds.SeriesNumber = series.series_number
    ds.BodyPartExamined = "ABDOMEN"
    ds.KVP = 120
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    if series.images_in_acquisition is not None:
        ds.ImagesInAcquisition = series.images_in_acquisition
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = dz
    ds.PixelSpacing = [dy, dx]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.RescaleIntercept = -HU_OFFSET
    ds.RescaleSlope = 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = stored.tobytes()
    return ds


def write_ct_series(
    phantom: CTPhantom, directory: Path, study_uid: str | None = None
) -> list[Path]:
    """One file per slice, axial, feet-first order of positions (LPS, +z is superior)."""
    directory.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = phantom.grid.spacing
    series = CTSeries(
        study_uid or generate_uid(),
        generate_uid(),
        generate_uid(),
        (dz, dy, dx),
        f"Abdomen {dz:g} mm {phantom.phase.value}",
    )
    slices, rows, columns = phantom.hu.shape
    origin_x = -(columns - 1) / 2 * dx
    origin_y = -(rows - 1) / 2 * dy
    paths = []
    for k in range(slices):
        stored = (phantom.hu[k].astype(np.int32) + HU_OFFSET).astype(np.uint16)
        ds = ct_slice(series, k, [origin_x, origin_y, (k - (slices - 1) / 2) * dz], stored)
        path = directory / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_us_cine(cine: UltrasoundCine, path: Path, study_uid: str | None = None) -> Path:
    """An Ultrasound Multi-frame Image, monochrome, with its physical region calibration."""
    ds = base_dataset(
        UltrasoundMultiFrameImageStorage,
        study_uid or generate_uid(),
        generate_uid(),
        "US",
        Patient(),
    )
    frames, rows, columns = cine.frames.shape
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    ds.SeriesDescription = "Liver cine (phantom)"
    ds.BodyPartExamined = "ABDOMEN"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.FrameTime = 33.3
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = columns - 1, rows - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = cine.pixel_spacing_mm / 10
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = cine.frames.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
