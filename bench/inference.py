"""Inference benchmark: time per study or cine, in-process ONNX Runtime against real Triton.

It runs the ultrasound pipeline on a fixed-seed phantom cine written as DICOM (decode,
preprocess, inference, postprocess) through ONNX Runtime in this process, then through the real
Triton server (CPU, Python backend running the same ONNX file) over HTTP and gRPC. It prints
each time and the share of the Triton time that is serving overhead (Triton minus in-process,
over Triton): the model computation is the same ONNX Runtime session in both.

    .venv/bin/python bench/inference.py [--frames 100] [--repeats 3]
"""

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.inference.backend import InferenceBackend, OnnxRuntimeBackend  # noqa: E402
from appliance.inference.contract import load_contract  # noqa: E402
from appliance.inference.triton import TritonBackend  # noqa: E402
from appliance.inference.triton_cpu import CpuTritonServer, TritonUnavailable  # noqa: E402
from appliance.inference.ultrasound import decode_cine, segment_cine  # noqa: E402
from appliance.phantoms.dicom import write_us_cine  # noqa: E402
from appliance.phantoms.ultrasound import generate_cine  # noqa: E402

REPOSITORY = ROOT / "model_repository"
CINE_TARGET_S = 10.0


def timed(action: Callable[[], object], repeats: int) -> float:
    action()  # warm-up: sessions, connections, caches
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    contract = load_contract(REPOSITORY / "us_frame")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_us_cine(generate_cine(424242, frames=args.frames), Path(tmp) / "cine.dcm")
        backends: dict[str, InferenceBackend] = {
            "ONNX Runtime, in process": OnnxRuntimeBackend(REPOSITORY, threads=2)
        }
        server = CpuTritonServer(REPOSITORY, Path(tmp) / "triton")
        try:
            server.start()
            backends["Triton (CPU) over HTTP"] = TritonBackend(
                f"127.0.0.1:{server.http_port}", "http"
            )
            backends["Triton (CPU) over gRPC"] = TritonBackend(
                f"127.0.0.1:{server.grpc_port}", "grpc"
            )
        except TritonUnavailable as exc:
            print(f"Triton skipped: {exc}")
        decode = timed(lambda: decode_cine(path), args.repeats)
        cine = decode_cine(path)
        print(
            f"us_frame, {args.frames}-frame cine {cine.frames.shape[1]}x{cine.frames.shape[2]}, "
            f"2 CPU cores; decode {decode:.2f} s; target {CINE_TARGET_S:.0f} s end to end"
        )
        print(f"{'backend':<28} {'segment s':>9} {'total s':>8} {'frames/s':>9} {'overhead':>8}")
        baseline = None
        for name, backend in backends.items():
            seconds = timed(lambda b=backend: segment_cine(cine, b, contract), args.repeats)
            baseline = baseline or seconds
            total = seconds + decode
            overhead = (seconds - baseline) / seconds
            print(
                f"{name:<28} {seconds:>9.2f} {total:>8.2f} {args.frames / seconds:>9.1f} "
                f"{overhead:>8.0%}"
            )
        server.stop()


if __name__ == "__main__":
    main()
