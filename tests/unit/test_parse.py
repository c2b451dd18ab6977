"""The edge parser: attributes read like pydicom reads them; any truncation is refused."""

import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from appliance.dicom.parse import InvalidInstance, parse_instance
from appliance.dicom.spool import data_set_of
from appliance.domain.status import Status
from tests.support.datasets import ct_slice, dataset_bytes, new_series

IMAGES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated
    "SC_rgb_rle.dcm",  # RLE, encapsulated pixel data
    "examples_ybr_color.dcm",  # JPEG baseline, 30-frame US cine
    "examples_jpeg2k.dcm",  # JPEG 2000 US
    "liver_1frame.dcm",  # SEG with nested sequences
]
CHARACTER_SETS = ["chrH31.dcm", "chrX1.dcm", "chrRuss.dcm", "chrH32.dcm"]


def data_file(name: str) -> Path:
    found = get_testdata_file(name, download=False) or get_charset_files(name)[0]
    return Path(found)


def load(name: str) -> tuple[bytes, str, str, str]:
    path = data_file(name)
    meta = dcmread(path, stop_before_pixels=True).file_meta
    return (
        dataset_bytes(path),
        str(meta.TransferSyntaxUID),
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
    )


def _optional_int(value: object) -> int | None:
    return int(value) if value not in (None, "") else None  # type: ignore[call-overload]


@pytest.mark.parametrize("name", IMAGES + CHARACTER_SETS)
def test_attributes_match_pydicom(name: str) -> None:
    encoded, syntax, sop_class, sop_instance = load(name)
    reference = dcmread(data_file(name))
    record = parse_instance(encoded, syntax, sop_class, sop_instance)
    assert record.sop_instance_uid == reference.SOPInstanceUID
    assert record.study_instance_uid == reference.StudyInstanceUID
    assert record.series_instance_uid == reference.SeriesInstanceUID
    assert record.transfer_syntax_uid == syntax
    assert record.modality == (reference.get("Modality") or None)
    assert record.number_of_frames == _optional_int(reference.get("NumberOfFrames"))
    assert record.instance_number == _optional_int(reference.get("InstanceNumber"))
    expected_name = str(reference.get("PatientName", "")).rstrip("=^ ") or None
    assert record.patient.patient_name == expected_name
    assert record.patient.patient_id == (reference.get("PatientID") or None)


def test_patient_identity_is_masked_in_repr() -> None:
    encoded, syntax, sop_class, sop_instance = load("CT_small.dcm")
    record = parse_instance(encoded, syntax, sop_class, sop_instance)
    assert record.patient.patient_name
    assert record.patient.patient_name not in repr(record)
    assert "<masked>" in repr(record)


@pytest.mark.parametrize("name", IMAGES)
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_every_truncation_is_refused(name: str, fraction: float) -> None:
    encoded, syntax, sop_class, sop_instance = load(name)
    if syntax == DeflatedExplicitVRLittleEndian:
        encoded = zlib.decompress(encoded, -zlib.MAX_WBITS)
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        cut = int(len(encoded) * fraction)
        encoded = compressor.compress(encoded[:cut]) + compressor.flush()
    else:
        encoded = encoded[: int(len(encoded) * fraction)]
    with pytest.raises(InvalidInstance) as refused:
        parse_instance(encoded, syntax, sop_class, sop_instance)
    assert refused.value.status in (
        Status.CANNOT_UNDERSTAND,  # cut inside an element
        Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,  # cut between elements: no pixel data
    )


def test_missing_uid_is_named() -> None:
    ds = ct_slice(new_series(1), 0)
    uid = ds.SOPInstanceUID
    del ds.StudyInstanceUID
    path_bytes = _encode(ds)
    with pytest.raises(InvalidInstance, match="StudyInstanceUID is missing"):
        parse_instance(path_bytes, "1.2.840.10008.1.2.1", ds.SOPClassUID, uid)


def test_malicious_uid_is_refused() -> None:
    ds = ct_slice(new_series(1), 0)
    ds.SeriesInstanceUID = "1.2.3/../../etc"
    with pytest.raises(InvalidInstance, match="SeriesInstanceUID is not a valid UID"):
        parse_instance(_encode(ds), "1.2.840.10008.1.2.1", ds.SOPClassUID, ds.SOPInstanceUID)


def test_request_mismatch_answers_a900() -> None:
    ds = ct_slice(new_series(1), 0)
    with pytest.raises(InvalidInstance) as refused:
        parse_instance(_encode(ds), "1.2.840.10008.1.2.1", ds.SOPClassUID, "1.2.3.4")
    assert refused.value.status is Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS


def test_image_without_pixel_data_is_refused() -> None:
    ds = ct_slice(new_series(1), 0)
    del ds.PixelData
    with pytest.raises(InvalidInstance, match="no pixel data") as refused:
        parse_instance(_encode(ds), "1.2.840.10008.1.2.1", ds.SOPClassUID, ds.SOPInstanceUID)
    assert refused.value.status is Status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS


def test_overlong_values_are_clipped_to_their_vr() -> None:
    ds = ct_slice(new_series(1), 0)
    ds.AccessionNumber = "A" * 40
    ds.StudyDescription = "D" * 300
    record = parse_instance(_encode(ds), "1.2.840.10008.1.2.1", ds.SOPClassUID, ds.SOPInstanceUID)
    assert record.patient.accession_number == "A" * 16
    assert record.study_description == "D" * 64


def test_a_damaged_character_set_is_refused_with_its_value() -> None:
    ds = ct_slice(new_series(1), 0)  # Specific Character Set ISO_IR 100
    damaged = _encode(ds).replace(b"ISO_IR 100", b"ISO_IR\x00100", 1)  # found by the fuzzer
    with pytest.raises(InvalidInstance, match=r"Specific Character Set 'ISO_IR.*' is unusable"):
        parse_instance(damaged, "1.2.840.10008.1.2.1", ds.SOPClassUID, ds.SOPInstanceUID)


def test_empty_and_garbage() -> None:
    with pytest.raises(InvalidInstance, match="empty"):
        parse_instance(b"", "1.2.840.10008.1.2.1", "1.2", "1.2")
    with pytest.raises(InvalidInstance):
        parse_instance(b"\xff" * 1000, "1.2.840.10008.1.2.1", "1.2", "1.2")
    with pytest.raises(InvalidInstance, match="does not inflate"):
        parse_instance(b"\xff" * 1000, DeflatedExplicitVRLittleEndian, "1.2", "1.2")


def _encode(ds) -> bytes:  # type: ignore[no-untyped-def]
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return data_set_of(buffer.getvalue())
