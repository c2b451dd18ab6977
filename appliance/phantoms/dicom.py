"""Write phantoms as real DICOM: a CT series with realistic headers, an ultrasound cine.

Used by tests, benchmarks and the demo to exercise series handling end to end, since no real
multi-slice CT ships with any package here.
"""

from pathlib import Path

import numpy as np
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


def _base(sop_class: str, study_uid: str, series_uid: str, modality: str) -> Dataset:
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
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = "PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20261124"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Manufacturer = "Appliance phantom (synthetic)"
    return ds


def write_ct_series(
    phantom: CTPhantom, directory: Path, study_uid: str | None = None
) -> list[Path]:
    """One file per slice, axial, feet-first order of positions (LPS, +z is superior)."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_reference = generate_uid()
    slices, rows, columns = phantom.hu.shape
    dz, dy, dx = phantom.grid.spacing
    origin_x = -(columns - 1) / 2 * dx
    origin_y = -(rows - 1) / 2 * dy
    paths = []
    for k in range(slices):
        ds = _base(CTImageStorage, study_uid, series_uid, "CT")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.StudyDescription = "CT ABDOMEN (phantom)"
        ds.SeriesDescription = f"Abdomen {dz:g} mm {phantom.phase.value}"
        ds.BodyPartExamined = "ABDOMEN"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [origin_x, origin_y, (k - (slices - 1) / 2) * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = dz
        ds.PixelSpacing = [dy, dx]
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = (phantom.hu[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        path = directory / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_us_cine(cine: UltrasoundCine, path: Path, study_uid: str | None = None) -> Path:
    """An Ultrasound Multi-frame Image, monochrome, with its physical region calibration."""
    ds = _base(UltrasoundMultiFrameImageStorage, study_uid or generate_uid(), generate_uid(), "US")
    frames, rows, columns = cine.frames.shape
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesDescription = "Liver cine (phantom)"
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
