"""Results benchmark: encoding SEG and SR for a whole CT, and sending objects to a PACS.

1. Encode: a 512x512x300 phantom CT (its 300 headers as the sources) with its 7 organs and
   5 liver lesions as 12 segments, through the whole result path (SEG and SR with highdicom,
   each through the gate), once as a Label Map SEG (RLE Lossless) and once as a BINARY SEG
   (empty frames omitted). The peer is the same path as it was before issue 20: highdicom's
   own RLE encoding (pydicom with pylibjpeg-rle) and the gate that read every element back
   under strict validation (`tests/support/strict_gate.py`), interleaved, median of the
   repeats, after one warm-up (a worker encodes many studies; highdicom loads its tables of
   the standard once). Peak memory is what Python and numpy allocate during the encoding
   (tracemalloc, in a run of its own), over what was already held.
2. Send: the same 512x512 CT instances sent over one association into one dcmtk storescp,
   by dcmtk storescu (the peer every ratio is taken against), by the appliance's SCU, and by a
   pynetdicom SCU tuned as far as it goes (TCP_NODELAY, chunked data set sending, its log
   handler off), interleaved, median of the repeats.

    .venv/bin/python -m bench.results [--count 300] [--repeats 3] [--only encode|send]
"""

import argparse
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from io import BytesIO
from pathlib import Path
from unittest.mock import patch

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless

from appliance.dicom.sender import Association, Peer, outgoing
from appliance.domain.findings import SegmentationType
from appliance.phantoms.ct import Grid, generate_ct
from appliance.results import encode, segmentation
from appliance.results.encode import ct_results
from appliance.results.segmentation import Equipment
from appliance.results.validate import CheckedResult
from bench.ingest import ENV, instances
from tests.support.scu import associate, send_files
from tests.support.services import free_port
from tests.support.strict_gate import strict_read_back
from tests.support.truth import truth_study
from tests.support.waiting import wait_for_port

REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
EQUIPMENT = Equipment("Appliance project", "DICOM inference appliance", "bench", "bench-1")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
BINARY = SegmentationType.BINARY


def bench_encode(scratch: Path, repeats: int) -> None:
    phantom = generate_ct(77, Grid((300, 512, 512), (1.5, 0.78, 0.78)), lesion_count=5)
    sources, findings = truth_study(phantom, scratch / "series")
    del phantom
    print(
        f"encode: CT 512x512x300, {len(findings.segments)} segments "
        f"({sum(s.finding_site is not None for s in findings.segments)} lesions), SEG + SR, "
        "each through the gate"
    )
    _warm_up(scratch)
    print(
        f"{'SEG type':<10} {'path':<8} {'seconds':>8} {'peak MiB':>9} {'SEG MiB':>8} {'frames':>7}"
    )
    for kind in (SegmentationType.LABELMAP, BINARY):
        seconds: dict[str, list[float]] = {"now": [], "before": []}
        for _ in range(repeats):
            for path in seconds:
                with _before() if path == "before" else nullcontext():
                    started = time.perf_counter()
                    ct_results(sources, findings, kind, EQUIPMENT)
                    seconds[path].append(time.perf_counter() - started)
        now = statistics.median(seconds["now"])
        for path, measured in seconds.items():
            with _before() if path == "before" else nullcontext():
                tracemalloc.start()  # a run of its own: tracing slows Python several times
                seg, _ = ct_results(sources, findings, kind, EQUIPMENT)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            median = statistics.median(measured)
            frames = int(dcmread(BytesIO(seg.encoded), stop_before_pixels=True).NumberOfFrames)
            print(
                f"{kind.value:<10} {path:<8} {median:>8.2f} {peak / 2**20:>9.0f} "
                f"{len(seg.encoded) / 2**20:>8.1f} {frames:>7}"
                + (f"   now / before {now / median:.2f}" if path == "before" else "")
            )


def _warm_up(scratch: Path) -> None:
    """One small study through both paths first, as a running worker has."""
    phantom = generate_ct(5, Grid((12, 40, 40), (5.0, 7.0, 7.0)), lesion_count=1)
    sources, findings = truth_study(phantom, scratch / "warm-up")
    for kind in SegmentationType:
        ct_results(sources, findings, kind, EQUIPMENT)
        with _before():
            ct_results(sources, findings, kind, EQUIPMENT)


@contextmanager
def _before() -> Iterator[None]:
    """The result path as it was before issue 20: highdicom's RLE (pydicom's encoder with
    pylibjpeg-rle, frame by frame) and the strict read-back gate."""

    def strict_check(result: Dataset, sources: Sequence[Dataset]) -> CheckedResult:
        encoded = strict_read_back(result, sources)
        return CheckedResult(
            str(result.SOPClassUID), str(result.SOPInstanceUID), str(result.Modality), encoded
        )

    def pydicom_rle(seg: Dataset) -> None:
        seg.compress(RLELossless, encoding_plugin="pylibjpeg")

    with (
        patch.object(encode, "check", strict_check),
        patch.object(segmentation, "_compress_rle", pydicom_rle),
    ):
        yield


def _storescu(port: int, files: list[Path]) -> None:
    command = ["storescu", "-R", "-aet", "BENCH", "-aec", "STORESCP", "127.0.0.1", str(port)]
    subprocess.run([*command, *map(str, files)], env=ENV, check=True, capture_output=True)


def _appliance(port: int, files: list[Path]) -> None:
    items = [outgoing(path.read_bytes()) for path in files]
    syntaxes = sorted({(item.sop_class_uid, item.transfer_syntax_uid) for item in items})
    with Association(Peer("STORESCP", "127.0.0.1", port, "BENCH"), syntaxes) as association:
        statuses = [association.store(item).code for item in items]
    assert set(statuses) == {0}


def _pynetdicom(port: int, files: list[Path]) -> None:
    logging.getLogger("pynetdicom").handlers.clear()
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    association = associate(port, [(CT_IMAGE_STORAGE, None)], "BENCH", "STORESCP")
    statuses = send_files(association, files, [])
    association.release()
    assert statuses == [0] * len(files)


SENDERS = {
    "dcmtk storescu": _storescu,
    "appliance SCU": _appliance,
    "pynetdicom (tuned)": _pynetdicom,
}


def bench_send(scratch: Path, count: int, repeats: int) -> None:
    files = instances(count)
    runs: dict[str, list[float]] = {name: [] for name in SENDERS}
    for repeat in range(repeats):
        for name, sender in SENDERS.items():
            out = scratch / f"scp-{repeat}-{name.split()[0]}"
            out.mkdir()
            port = free_port()
            server = subprocess.Popen(
                ["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                wait_for_port(port)
                started = time.perf_counter()
                sender(port, files)
                runs[name].append(time.perf_counter() - started)
            finally:
                server.terminate()
                server.wait()
            stored = sum(1 for _ in out.iterdir())
            assert stored == count, f"{name}: storescp stored {stored} of {count}"
            shutil.rmtree(out)
    size = files[0].stat().st_size / 2**10
    print(f"\nsend: {count} CT instances of {size:.0f} KiB, one association, into dcmtk storescp")
    print(f"{'sender':<20} {'inst/s':>8} {'ratio':>6}")
    baseline = count / statistics.median(runs["dcmtk storescu"])
    for name, seconds in runs.items():
        rate = count / statistics.median(seconds)
        print(f"{name:<20} {rate:>8.1f} {rate / baseline:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["encode", "send"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "send":
            bench_encode(Path(tmp), args.repeats)
        if args.only != "encode":
            bench_send(Path(tmp), args.count, args.repeats)


if __name__ == "__main__":
    main()
