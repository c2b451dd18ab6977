"""Inference benchmark: time per study or cine, in-process ONNX Runtime against real Triton.

Each pipeline runs on fixed-seed phantoms written as DICOM, end to end (decoding,
preprocessing, inference, postprocessing), through ONNX Runtime in this process, then through
the real Triton server (CPU, Python backend running the same ONNX files) over HTTP and gRPC.
It prints each time and the Triton share: the part of the Triton time spent serving rather
than computing (Triton minus in-process, over Triton), since the model computation is the same
ONNX Runtime session in both.

    .venv/bin/python -m bench.inference [--frames 100] [--repeats 3] [--only us|ct]
"""

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from appliance.app.pipelines import run_volume
from appliance.inference.backend import InferenceBackend, OnnxRuntimeBackend
from appliance.inference.catalog import load_catalog
from appliance.inference.contract import load_contract
from appliance.inference.triton import TritonBackend
from appliance.inference.triton_cpu import CpuTritonServer, TritonUnavailable
from appliance.inference.ultrasound import decode_cine, segment_cine
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_ct_series, write_us_cine
from appliance.phantoms.ultrasound import generate_cine

ROOT = Path(__file__).resolve().parent.parent

REPOSITORY = ROOT / "model_repository"
CINE_TARGET_S = 10.0
CT_TARGET_S = 20.0


def timed(action: Callable[[], object], repeats: int) -> float:
    action()  # warm-up: sessions, connections, caches
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


@contextlib.contextmanager
def backends(scratch: Path) -> Iterator[dict[str, InferenceBackend]]:
    """ONNX Runtime in process, then the real Triton server over HTTP and gRPC."""
    found: dict[str, InferenceBackend] = {
        "ONNX Runtime, in process": OnnxRuntimeBackend(REPOSITORY, threads=2)
    }
    server = CpuTritonServer(REPOSITORY, scratch / "triton")
    try:
        server.start()
        found["Triton (CPU) over HTTP"] = TritonBackend(f"127.0.0.1:{server.http_port}", "http")
        found["Triton (CPU) over gRPC"] = TritonBackend(f"127.0.0.1:{server.grpc_port}", "grpc")
    except TritonUnavailable as exc:
        print(f"Triton skipped: {exc}")
    try:
        yield found
    finally:
        server.stop()


def table(rows: dict[str, float], unit: str, count: int) -> None:
    print(f"{'backend':<28} {'seconds':>8} {unit + '/s':>9} {'Triton share':>12}")
    baseline = None
    for name, seconds in rows.items():
        baseline = baseline or seconds
        share = (seconds - baseline) / seconds
        print(f"{name:<28} {seconds:>8.2f} {count / seconds:>9.1f} {share:>12.0%}")


def bench_ultrasound(
    found: dict[str, InferenceBackend], scratch: Path, frames: int, repeats: int
) -> None:
    contract = load_contract(REPOSITORY / "us_frame" / "1")
    path = write_us_cine(generate_cine(424242, frames=frames), scratch / "cine.dcm")
    decode = timed(lambda: decode_cine(path), repeats)
    cine = decode_cine(path)
    rows = {
        name: timed(lambda b=backend: segment_cine(cine, b, contract), repeats) + decode
        for name, backend in found.items()
    }
    print(
        f"\nus_frame: {frames}-frame cine {cine.frames.shape[1]}x{cine.frames.shape[2]}, 2 CPU "
        f"cores, median of {repeats}, decoding ({decode:.2f} s) included; target "
        f"{CINE_TARGET_S:.0f} s"
    )
    table(rows, "frames", frames)


def bench_ct(found: dict[str, InferenceBackend], scratch: Path, repeats: int) -> None:
    """A 512x512x300 abdominal CT at 0.78 x 0.78 x 1.5 mm, loaded from its 300 files: organs
    at 3 mm over the body, then lesions at 1.5 mm in the liver's box, then measurements."""
    catalog = load_catalog(REPOSITORY)
    pipeline = catalog.pipelines["ct"]
    phantom = generate_ct(77, Grid((300, 512, 512), (1.5, 0.78, 0.78)), lesion_count=3)
    paths = write_ct_series(phantom, scratch / "series")
    del phantom
    rows = {
        name: timed(lambda b=backend: run_volume(pipeline, catalog, paths, b), repeats)
        for name, backend in found.items()
    }
    print(
        f"\norgan_ct + lesion_ct: CT 512x512x300 from 300 files to findings, 2 CPU cores, "
        f"median of {repeats}; target {CT_TARGET_S:.0f} s"
    )
    table(rows, "slices", 300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["us", "ct"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, backends(Path(tmp)) as found:
        if args.only != "ct":
            bench_ultrasound(found, Path(tmp), args.frames, args.repeats)
        if args.only != "us":
            bench_ct(found, Path(tmp), args.repeats)


if __name__ == "__main__":
    main()
