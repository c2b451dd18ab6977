"""Durable spool: Part 10 files that read back strictly, with the data set bytes untouched."""

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

from appliance.dicom.parse import parse_instance
from appliance.dicom.spool import (
    IMPLEMENTATION_CLASS_UID,
    Spool,
    SpoolFull,
    encode_file_meta,
)
from appliance.domain.instance import InstanceRecord
from appliance.domain.uids import parse_uid
from tests.support.datasets import ct_slice, dataset_bytes, new_series


def _record_and_bytes(tmp_path: Path) -> tuple[InstanceRecord, bytes, Path]:
    ds = ct_slice(new_series(1), 0)
    source = tmp_path / "source.dcm"
    ds.save_as(source, enforce_file_format=True)
    encoded = dataset_bytes(source)
    record = parse_instance(encoded, "1.2.840.10008.1.2.1", ds.SOPClassUID, ds.SOPInstanceUID)
    return record, encoded, source


def test_store_writes_part10_that_reads_back_strictly(tmp_path: Path) -> None:
    record, encoded, source = _record_and_bytes(tmp_path)
    spool = Spool(tmp_path / "spool", watermark_percent=100)

    stored = spool.store(record, encode_file_meta(record, "PACS"), encoded)

    path = spool.root / stored.path
    assert dataset_bytes(path) == encoded
    meta = read_file_meta_info(path)
    assert meta.MediaStorageSOPInstanceUID == record.sop_instance_uid
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.SourceApplicationEntityTitle == "PACS"
    parse_uid(IMPLEMENTATION_CLASS_UID, "ImplementationClassUID")
    strict = dcmread(path, force=False)
    assert strict.PixelData == dcmread(source).PixelData
    assert stored.size_bytes == path.stat().st_size
    assert path.parent.name == record.series_instance_uid
    assert not list((spool.root / ".incoming").iterdir())


def test_store_replaces_atomically(tmp_path: Path) -> None:
    record, encoded, _ = _record_and_bytes(tmp_path)
    spool = Spool(tmp_path / "spool", watermark_percent=100)
    meta = encode_file_meta(record, "PACS")
    first = spool.store(record, meta, encoded)
    second = spool.store(record, meta, encoded[:-2] + b"\x00\x00")
    assert first.path == second.path
    assert first.sha256 != second.sha256
    assert len(list(spool.root.rglob("*.dcm"))) == 1


def test_watermark_refuses_before_writing(tmp_path: Path) -> None:
    record, encoded, _ = _record_and_bytes(tmp_path)
    spool = Spool(tmp_path / "spool", watermark_percent=0.0001)
    with pytest.raises(SpoolFull, match="watermark"):
        spool.store(record, b"", encoded)
    assert not list(spool.root.rglob("*.dcm"))


def test_clear_staging_removes_crash_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", watermark_percent=100)
    (spool.root / ".incoming" / "abc.part").write_bytes(b"partial")
    assert spool.clear_staging() == 1
    assert not list((spool.root / ".incoming").iterdir())
