"""Synthetic DICOM for tests and benchmarks: CT series of random pixels with realistic headers
and a recognisable patient, built with the phantoms' own CT image builder, written as files."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance.dicom.spool import data_set_of
from appliance.phantoms.dicom import CTSeries, Patient
from appliance.phantoms.dicom import ct_slice as phantom_slice

PATIENT_NAME = "Testpatient^Recognisable"
PATIENT_ID = "PID-4711-SECRET"
PATIENT = Patient(PATIENT_NAME, PATIENT_ID, "19600101", "ACC-0001")
SLICE_MM = 3.0
PIXEL_MM = 0.8


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
    """Slice `index` of the series: 3 mm apart, 0.8 mm pixels, signed noise 0..2000."""
    series = CTSeries(
        spec.study_uid,
        spec.series_uid,
        spec.study_uid + ".1" if len(spec.study_uid) < 62 else generate_uid(),
        (SLICE_MM, PIXEL_MM, PIXEL_MM),
        "Abdomen 3.0",
        PATIENT,
        spec.series_number,
        spec.slices if spec.images_in_acquisition else None,
    )
    pixels = np.random.default_rng(index).integers(0, 2000, (spec.rows, spec.columns), np.int16)
    ds = phantom_slice(series, index, [-200.0, -200.0, -SLICE_MM * index], pixels)
    if sop_instance_uid is not None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
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
