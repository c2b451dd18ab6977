"""Synthetic DICOM for tests and benchmarks: CT series with realistic headers, written as files."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from appliance.dicom.spool import data_set_of

PATIENT_NAME = "Testpatient^Recognisable"
PATIENT_ID = "PID-4711-SECRET"


@dataclass(frozen=True)
class SeriesSpec:
    study_uid: str
    series_uid: str
    slices: int
    rows: int = 64
    columns: int = 64
    images_in_acquisition: bool = False
    series_number: int = 1


def new_series(slices: int, rows: int = 64, columns: int = 64, **kwargs: object) -> SeriesSpec:
    return SeriesSpec(generate_uid(), generate_uid(), slices, rows, columns, **kwargs)  # type: ignore[arg-type]


def ct_slice(spec: SeriesSpec, index: int, sop_instance_uid: str | None = None) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = "20261124"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-0001"
    ds.Modality = "CT"
    ds.Manufacturer = "Phantom"
    ds.StudyDescription = "CT ABDOMEN"
    ds.SeriesDescription = "Abdomen 3.0"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = "3.0"
    ds.KVP = "120"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = spec.series_number
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [-200.0, -200.0, -3.0 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = spec.study_uid + ".1" if len(spec.study_uid) < 62 else generate_uid()
    if spec.images_in_acquisition:
        ds.ImagesInAcquisition = spec.slices
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = [0.8, 0.8]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 2000, size=(spec.rows, spec.columns), dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    return ds


def write_series(spec: SeriesSpec, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(spec.slices):
        ds = ct_slice(spec, index)
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part 10 file (everything after the File Meta Information)."""
    return data_set_of(path.read_bytes())
