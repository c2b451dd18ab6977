"""Large inputs and the memory they take:

- a 1,020-frame JPEG baseline YBR ultrasound cine (the real 30-frame cine in pydicom's wheel,
  its frames repeated) through the US pipeline's decoder; the peer is pydicom decoding the
  whole cine at once (`pixel_array`), as the decoder did before it streamed;
- a 2,000-instance CT series (512 x 512) read into the CT pipeline's volume; the peer is the
  naive reader that holds every data set, pixels and all, before stacking them.

Memory is the peak of Python's and NumPy's allocations (tracemalloc) during each, so the
figures are comparable within one process.

    .venv/bin/python -m bench.large [--repeat 34] [--ct-slices 2000]
"""

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames

from appliance.inference.ct import load_series
from appliance.inference.ultrasound import decode_cine
from tests.support.datasets import new_series, write_series


def long_cine(path: Path, repeat: int) -> int:
    source = dcmread(get_testdata_file("examples_ybr_color.dcm", download=False) or "")
    frames = list(generate_frames(source.PixelData, number_of_frames=int(source.NumberOfFrames)))
    source.PixelData = encapsulate(frames * repeat)
    source.NumberOfFrames = len(frames) * repeat
    source.save_as(path, enforce_file_format=True)
    return len(frames) * repeat


def measure(name: str, run: Callable[[], object]) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{name:<56} {seconds:6.1f} s  peak {peak / 2**20:7.0f} MiB  -> {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=34, help="copies of the 30 frames")
    parser.add_argument("--ct-slices", type=int, default=2000)
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

        slices = write_series(new_series(arguments.ct_slices, rows=512, columns=512),
                              Path(scratch) / "ct")  # fmt: skip
        volume_mib = arguments.ct_slices * 512 * 512 * 4 / 2**20
        print(f"CT: {arguments.ct_slices} slices of 512 x 512, 16-bit; "
              f"the float32 volume alone is {volume_mib:.0f} MiB")  # fmt: skip
        measure("appliance load_series (headers, then a slice at a time)",
                lambda: load_series(slices).hu.shape)  # fmt: skip
        measure("peer: every data set held, then stacked",
                lambda: naive_volume(slices))  # fmt: skip


def naive_volume(paths: list[Path]) -> tuple[int, ...]:
    datasets = [dcmread(path) for path in paths]
    return np.stack([d.pixel_array.astype(np.float32) for d in datasets]).shape


if __name__ == "__main__":
    main()
