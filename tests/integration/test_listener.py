"""The listener against real peers: dcmtk storescu/echoscu and a pynetdicom SCU."""

import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, RTPlanStorage  # type: ignore[attr-defined]
from sqlalchemy import Engine, func, select

from appliance.domain.status import Status
from appliance.store.models import AuditEvent, Instance, Study
from appliance.store.study_ledger import StudyLedger
from tests.support.datasets import ct_slice, dataset_bytes, new_series, write_series
from tests.support.dcmtk import dcmtk_env, echoscu, storescu
from tests.support.scu import associate, send_files, store
from tests.support.services import ON_SQLITE_ONLY, missing_service

pytestmark = pytest.mark.usefixtures("dcmtk")


def audit_rows(engine: Engine, event_type: str) -> list[AuditEvent]:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)))


def count(engine: Engine, model: type) -> int:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def pynetdicom_send(port: int, paths: list[Path], calling: str = "PYSCU") -> list[int]:
    """Send each file's data set bytes exactly as stored and return the statuses."""
    assoc = associate(port, [(CTImageStorage, ["1.2.840.10008.1.2.1"])], calling)
    assert assoc.is_established
    try:
        return send_files(assoc, paths, [])
    finally:
        assoc.release()


def test_storescu_instances_land_byte_identical_with_audit_rows(start, tmp_path: Path) -> None:
    running = start()
    spec = new_series(12)
    files = write_series(spec, tmp_path / "in")

    result = storescu(running.port, files)

    assert result.returncode == 0, result.stderr
    stored = sorted(running.spool.rglob("*.dcm"))
    assert len(stored) == 12
    by_name = {path.name: path for path in stored}
    for source in files:
        target = by_name[source.name]
        assert dataset_bytes(target) == dataset_bytes(source)
        meta = dcmread(target, stop_before_pixels=True).file_meta
        assert meta.SourceApplicationEntityTitle == "STORESCU"
    assert count(running.engine, Instance) == 12
    assert len(audit_rows(running.engine, "instance_stored")) == 12
    ended = audit_rows(running.engine, "association_ended")
    assert len(ended) == 1
    assert "12 stored, 0 failed" in (ended[0].detail or "")


def test_echo_and_unknown_calling_ae_refused_with_audit(start, tmp_path: Path) -> None:
    running = start()
    assert echoscu(running.port).returncode == 0

    refused = storescu(running.port, write_series(new_series(1), tmp_path), calling="INTRUDER")

    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr
    events = audit_rows(running.engine, "association_refused")
    assert [e.actor for e in events] == ["INTRUDER"]
    assert "calling AE title not recognised" in (events[0].detail or "")
    assert not list(running.spool.rglob("*.dcm"))


def test_wrong_called_ae_and_wrong_host_refused(start, tmp_path: Path) -> None:
    running = start()
    files = write_series(new_series(1), tmp_path)

    wrong_called = storescu(running.port, files, called="SOMEONE")
    wrong_host = storescu(running.port, files, calling="FARAWAY")

    assert "Called AE Title Not Recognized" in wrong_called.stderr
    assert "Calling AE Title Not Recognized" in wrong_host.stderr
    reasons = sorted(e.detail or "" for e in audit_rows(running.engine, "association_refused"))
    assert reasons[0].startswith("called AE title not recognised")
    assert reasons[1].startswith("calling AE title not allowed from this host")
    assert echoscu(running.port).returncode == 0


def test_a_host_over_its_association_rate_is_refused_transiently_and_audited_once(
    start, tmp_path: Path
) -> None:
    running = start(
        listener={"associations_per_minute_per_host": 30, "association_burst_per_host": 3}
    )

    echoes = [echoscu(running.port) for _ in range(6)]

    assert [e.returncode for e in echoes[:3]] == [0, 0, 0]
    for refused in echoes[3:]:
        assert refused.returncode != 0
        assert "Local Limit Exceeded" in refused.stderr, refused.stderr
    events = audit_rows(running.engine, "association_refused")
    assert [e.detail for e in events] == [
        "too many associations from this host (called AE APPLIANCE)"
    ]
    time.sleep(2.1)  # one new association every 2 s at 30 a minute
    assert echoscu(running.port).returncode == 0


def test_above_disk_watermark_answers_out_of_resources_and_keeps_serving(
    start, tmp_path: Path
) -> None:
    running = start(spool={"path": str(tmp_path / "spool"), "disk_watermark_percent": 0.001})
    files = write_series(new_series(2), tmp_path / "in")

    statuses = pynetdicom_send(running.port, files)

    assert statuses == [Status.OUT_OF_RESOURCES] * 2
    assert not list(running.spool.rglob("*.dcm"))
    assert count(running.engine, Instance) == 0
    rejected = audit_rows(running.engine, "instance_rejected")
    assert len(rejected) == 2
    assert "watermark" in (rejected[0].detail or "")
    assert echoscu(running.port).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a spool disk that really fills up (mounting needs root, as in CI)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        missing_service(f"cannot mount a small tmpfs: {mounted.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def test_a_full_disk_answers_out_of_resources_keeps_serving_and_resumes(
    start, tmp_path: Path, small_disk: Path
) -> None:
    running = start(spool={"path": str(small_disk / "spool"), "disk_watermark_percent": 100})
    files = write_series(new_series(8, rows=512, columns=512), tmp_path / "in")  # 0.5 MiB each

    first = pynetdicom_send(running.port, files)

    assert first[0] == Status.SUCCESS
    assert Status.OUT_OF_RESOURCES in first, first
    assert set(first) <= {Status.SUCCESS, Status.OUT_OF_RESOURCES}
    reasons = [e.detail or "" for e in audit_rows(running.engine, "instance_rejected")]
    assert len(reasons) == first.count(Status.OUT_OF_RESOURCES)
    assert all("No space left on device" in r or "watermark" in r for r in reasons), reasons
    assert echoscu(running.port).returncode == 0
    assert not list((small_disk / "spool" / ".incoming").glob("*.part"))

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    refused = [path for path, status in zip(files, first, strict=True) if status]
    assert pynetdicom_send(running.port, refused) == [Status.SUCCESS] * len(refused)
    assert count(running.engine, Instance) == len(files)
    stored = {path.name: path for path in (small_disk / "spool").rglob("*.dcm")}
    assert sorted(stored) == sorted(path.name for path in files)
    for source in files:
        assert dataset_bytes(stored[source.name]) == dataset_bytes(source)


@pytest.mark.parametrize("policy", ["keep_first", "replace"])
def test_duplicates_follow_policy(start, tmp_path: Path, policy: str) -> None:
    running = start(listener={"duplicate_policy": policy})
    spec = new_series(1)
    uid = generate_uid()
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    original = ct_slice(spec, 0, uid)
    original.save_as(first, enforce_file_format=True)
    changed = ct_slice(spec, 0, uid)
    changed.SeriesDescription = "changed"
    changed.save_as(second, enforce_file_format=True)

    statuses = pynetdicom_send(running.port, [first, first, second])

    assert statuses == [Status.SUCCESS] * 3
    (stored,) = list(running.spool.rglob("*.dcm"))
    expected = first if policy == "keep_first" else second
    assert dataset_bytes(stored) == dataset_bytes(expected)
    assert count(running.engine, Instance) == 1
    if policy == "keep_first":
        details = [e.detail for e in audit_rows(running.engine, "instance_duplicate")]
        assert details == [
            "identical copy ignored",
            "different content under a stored SOP Instance UID; first copy kept",
        ]
    else:
        assert len(audit_rows(running.engine, "instance_replaced")) == 2


def test_bad_input_gets_failure_status_and_audit_then_echo_works(start, tmp_path: Path) -> None:
    running = start()
    spec = new_series(3)
    whole = tmp_path / "whole.dcm"
    ct_slice(spec, 0).save_as(whole, enforce_file_format=True)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole.read_bytes()[:-1000])
    no_uid = tmp_path / "no_uid.dcm"
    ds = ct_slice(spec, 1)
    del ds.SOPInstanceUID
    ds.save_as(no_uid, enforce_file_format=True)

    statuses = pynetdicom_send(running.port, [truncated, no_uid, whole])

    assert statuses[0] == Status.CANNOT_UNDERSTAND
    assert statuses[1] in (Status.CANNOT_UNDERSTAND,)
    assert statuses[2] == Status.SUCCESS
    reasons = [e.detail or "" for e in audit_rows(running.engine, "instance_rejected")]
    assert any("truncated" in r for r in reasons)
    assert any("SOPInstanceUID is missing" in r for r in reasons)
    assert count(running.engine, Instance) == 1
    assert echoscu(running.port).returncode == 0


def test_a_status_pynetdicoms_reactor_takes_is_still_read_off_the_wire(
    start, tmp_path: Path
) -> None:
    """The tests' SCU judges the listener by what it sent. pynetdicom's requestor reactor can take
    a C-STORE response off the queue before send_c_store looks for it (pydicom/pynetdicom#875),
    and send_c_store then times out: here the reactor is made to win that race every time."""
    running = start()
    (path,) = write_series(new_series(1), tmp_path)
    assoc = associate(running.port, [(CTImageStorage, ["1.2.840.10008.1.2.1"])])
    assert assoc.is_established
    taken_by_the_reactor = assoc.dimse.get_msg

    def too_late(block: bool = False) -> tuple[None, None]:
        taken_by_the_reactor(block=True)
        return None, None

    assoc.dimse.get_msg = too_late  # type: ignore[method-assign]

    assert store(assoc, path) == Status.SUCCESS
    assert not assoc.is_established  # send_c_store saw no response, and aborted
    assert count(running.engine, Instance) == 1


def test_unsupported_sop_class_refused_with_audit(start, tmp_path: Path) -> None:
    running = start()
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(RTPlanStorage)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", running.port, ae_title="APPLIANCE")
    assert assoc.is_established
    assert [str(c.abstract_syntax) for c in assoc.rejected_contexts] == [RTPlanStorage]
    assoc.release()
    events = audit_rows(running.engine, "context_refused")
    assert len(events) == 1
    assert "1.2.840.10008.5.1.4.1.1.481.5" in (events[0].detail or "")
    assert echoscu(running.port).returncode == 0


def test_study_rows_hold_patient_data_but_logs_do_not(start, tmp_path: Path, caplog) -> None:
    from sqlalchemy.orm import Session

    from tests.support.datasets import PATIENT_ID, PATIENT_NAME

    running = start()
    caplog.set_level("DEBUG")
    storescu(running.port, write_series(new_series(2), tmp_path))
    StudyLedger(running.engine, running.settings.study.completion_policy()).fold_pending(
        datetime.now(UTC)
    )
    with Session(running.engine) as session:
        study = session.scalars(select(Study)).one()
    assert study.patient_id == PATIENT_ID
    assert study.instance_count == 2
    assert PATIENT_ID not in caplog.text
    assert "Recognisable" not in caplog.text
    assert PATIENT_NAME not in caplog.text


@pytest.mark.parametrize(
    ("name", "propose"),
    [
        ("examples_ybr_color.dcm", "-xy"),  # US Multi-frame, JPEG baseline
        ("examples_jpeg2k.dcm", "-xv"),  # US, JPEG 2000 lossless
        ("MR_small_jp2klossless.dcm", "-xv"),  # MR, JPEG 2000 lossless
        ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # MR, JPEG-LS lossless
        ("JPGExtended.dcm", "-xx"),  # SC, JPEG extended
        ("MR_small_RLE.dcm", "-xr"),  # MR, RLE
        ("image_dfl.dcm", "-xd"),  # SC, deflated
        ("MR_small_bigendian.dcm", "-xb"),  # MR, explicit VR big endian
        ("MR_small_implicit.dcm", "-xi"),  # MR, implicit VR little endian
        ("liver_1frame.dcm", "-xe"),  # Segmentation
    ],
)
def test_real_files_in_every_transfer_syntax_are_stored_as_received(
    start, name: str, propose: str
) -> None:
    """pynetdicom sends the file's bytes untouched: the spool must hold exactly those.
    dcmtk re-encodes what it sends (lengths, for one), so with it the elements must match."""
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file(name, download=False) or "")
    source_meta = dcmread(source, stop_before_pixels=True).file_meta
    syntax = str(source_meta.TransferSyntaxUID)
    exact = start()
    assoc = associate(exact.port, [(str(source_meta.MediaStorageSOPClassUID), [syntax])])
    statuses = send_files(assoc, [source], [])
    assoc.release()
    via_dcmtk = start()
    result = storescu(via_dcmtk.port, [source], propose)

    assert statuses == [Status.SUCCESS]
    (stored,) = list(exact.spool.rglob("*.dcm"))
    assert dataset_bytes(stored) == dataset_bytes(source)
    stored_meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert stored_meta.TransferSyntaxUID == syntax
    assert stored_meta.MediaStorageSOPClassUID == source_meta.MediaStorageSOPClassUID
    assert result.returncode == 0, result.stderr
    (from_dcmtk,) = list(via_dcmtk.spool.rglob("*.dcm"))
    assert dcmread(from_dcmtk) == dcmread(source)


@ON_SQLITE_ONLY
def test_the_readmes_folder_command_sends_a_mixed_folder_whole(start, tmp_path: Path) -> None:
    """README's `dcmsend ... +sd study/` on what a new user has: compressed and uncompressed
    files side by side, each stored in its own transfer syntax."""
    from pydicom.data import get_testdata_file

    folder = tmp_path / "study"
    folder.mkdir()
    names = ["CT_small.dcm", "JPEG2000.dcm", "examples_ybr_color.dcm", "MR_small_RLE.dcm"]
    for name in names:
        shutil.copyfile(get_testdata_file(name, download=False) or "", folder / name)
    running = start(listener={"peers": [{"ae_title": "STORESCU", "hosts": ["127.0.0.1"]}]})
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "dcmsend -aet STORESCU -aec APPLIANCE 127.0.0.1 11112 +sd study/" in readme
    sent = subprocess.run(
        ["dcmsend", "-aet", "STORESCU", "-aec", "APPLIANCE", "127.0.0.1", str(running.port),
         "+sd", str(folder)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    stored = {
        str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for path in running.spool.rglob("*.dcm")
    }
    expected = {
        str(dcmread(folder / name, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        for name in names
    }
    assert len(list(running.spool.rglob("*.dcm"))) == len(names)
    # dcmsend proposes each file's syntax and an uncompressed one: where the listener takes
    # the uncompressed, dcmsend decompresses a losslessly compressed file (RLE) first
    lossy = {syntax for syntax in expected if UID(syntax).is_compressed and syntax != RLELossless}
    assert lossy <= stored <= expected | {ExplicitVRLittleEndian}
