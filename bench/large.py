"""Large inputs: a 1,020-frame JPEG baseline YBR ultrasound cine (the real 30-frame cine in
pydicom's wheel, its frames repeated) through the US pipeline's decoder, and the memory it
takes. The peer, in the same run: pydicom decoding the whole cine at once (`pixel_array`),
as the decoder did before it streamed.

Memory is the peak of Python's and NumPy's allocations (tracemalloc) during each, so the two
figures are comparable within one process.

    .venv/bin/python bench/large.py [--repeat 34]
"""

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.inference.ultrasound import decode_cine  # noqa: E402


def long_cine(path: Path, repeat: int) -> int:
    source = dcmread(get_testdata_file("examples_ybr_color.dcm", download=False) or "")
    frames = list(generate_frames(source.PixelData, number_of_frames=int(source.NumberOfFrames)))
    source.PixelData = encapsulate(frames * repeat)
    source.NumberOfFrames = len(frames) * repeat
    source.save_as(path, enforce_file_format=True)
    return len(frames) * repeat


def measure(name: str, run: object) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    result = run()  # type: ignore[operator]
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{name:<44} {seconds:6.1f} s  peak {peak / 2**20:7.0f} MiB  -> {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=34, help="copies of the 30 frames")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="large-") as scratch:
        path = Path(scratch) / "cine.dcm"
        frames = long_cine(path, arguments.repeat)
        print(f"cine: {frames} frames of 240 x 320, JPEG baseline YBR, "
              f"{path.stat().st_size / 2**20:.1f} MiB on disk")  # fmt: skip
        measure("appliance decode_cine (a frame at a time)",
                lambda: decode_cine(path).frames.shape)  # fmt: skip
        measure("peer: pydicom pixel_array (the whole cine)",
                lambda: dcmread(path).pixel_array.shape)  # fmt: skip


if __name__ == "__main__":
    main()
