"""Inference benchmark: time per study or cine, in-process ONNX Runtime against real Triton.

It runs the ultrasound pipeline on a fixed-seed phantom cine written as DICOM (decode,
preprocess, inference, postprocess) through ONNX Runtime in this process, then through the real
Triton server (CPU, Python backend running the same ONNX file) over HTTP and gRPC. It prints
each time and the share of the Triton time that is serving overhead (Triton minus in-process,
over Triton): the model computation is the same ONNX Runtime session in both.

    .venv/bin/python bench/inference.py [--frames 100] [--repeats 3]
    .venv/bin/python bench/inference.py --ct --repeats 1     # needs the train extra (torch)
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
CT_TARGET_S = 20.0


def timed(action: Callable[[], object], repeats: int) -> float:
    action()  # warm-up: sessions, connections, caches
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def ct_repository(directory: Path) -> Path:
    """organ_ct and lesion_ct as ONNX, from their checkpoints when present (timing does not
    depend on the weights: an untrained network costs the same)."""
    import torch

    from appliance.training import lesion_ct, organ_ct
    from appliance.training.publish import export_onnx, publish
    from appliance.training.unet import UNet

    for module, name in ((organ_ct, "organ_ct"), (lesion_ct, "lesion_ct")):
        model = UNet(dims=3, in_channels=1, classes=module.CLASSES, base=8, levels=4)
        checkpoint = ROOT / "checkpoints" / f"{name}.pt"
        if checkpoint.exists():
            model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        export_onnx(model, directory / name / "1" / "model.onnx", module.CONTRACT)
        publish(directory / name, module.CONTRACT, "benchmark", "benchmark", {}, {})
    return directory


def bench_ct(repeats: int) -> None:
    """A 512x512x300 abdominal CT at 0.78 x 0.78 x 1.5 mm: organs, then lesions in the liver."""
    from appliance.inference.ct import load_series, segment_ct, segment_in_region
    from appliance.inference.measurements import measure_lesions
    from appliance.phantoms.ct import Grid, Organ, generate_ct
    from appliance.phantoms.dicom import write_ct_series

    with tempfile.TemporaryDirectory() as tmp:
        repository = ct_repository(Path(tmp) / "repository")
        backend = OnnxRuntimeBackend(repository, threads=2)
        organs, lesions = (load_contract(repository / n) for n in ("organ_ct", "lesion_ct"))
        phantom = generate_ct(77, Grid((300, 512, 512), (1.5, 0.78, 0.78)), lesion_count=3)
        paths = write_ct_series(phantom, Path(tmp) / "series")
        del phantom
        stages: dict[str, list[float]] = {}

        def stage(name: str, action: Callable[[], object]) -> object:
            started = time.perf_counter()
            result = action()
            stages.setdefault(name, []).append(time.perf_counter() - started)
            return result

        for _ in range(repeats):
            volume = stage("load series (300 files)", lambda: load_series(paths))
            labels = stage("organ_ct (3 mm)", lambda v=volume: segment_ct(v, backend, organs))
            liver = labels == int(Organ.LIVER)  # type: ignore[operator]
            found = stage(
                "lesion_ct in the liver box (1.5 mm)",
                lambda v=volume, r=liver: segment_in_region(v, r, backend, lesions),
            )
            stage(
                "lesion measurements",
                lambda f=found, v=volume: measure_lesions(f > 0, v.geometry.spacing),
            )  # type: ignore[operator, union-attr]
        print(
            f"CT 512x512x300, organs then lesions, 2 CPU cores, median of {repeats}; "
            f"target {CT_TARGET_S:.0f} s"
        )
        total = 0.0
        for name, runs in stages.items():
            seconds = statistics.median(runs)
            total += seconds
            print(f"  {name:<40} {seconds:>6.2f} s")
        print(f"  {'total':<40} {total:>6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ct", action="store_true", help="the CT study instead (needs torch)")
    args = parser.parse_args()
    if args.ct:
        bench_ct(args.repeats)
        return
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
