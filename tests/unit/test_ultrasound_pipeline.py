"""The ultrasound pipeline decodes real cines and lands masks on the source frames."""

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.contract import load_contract
from appliance.inference.ultrasound import Cine, UnsupportedFrames, decode_cine, segment_cine
from tests.support.models import write_tiny_model


@pytest.mark.parametrize(
    ("name", "frames", "shape"),
    [
        ("examples_ybr_color.dcm", 30, (240, 320)),  # a real echo cine, JPEG baseline YBR
        ("examples_rgb_color.dcm", 1, (240, 320)),
        ("examples_jpeg2k.dcm", 1, (480, 640)),
        ("examples_palette.dcm", 1, (350, 800)),
    ],
)
def test_real_ultrasound_files_decode_to_luminance(
    name: str, frames: int, shape: tuple[int, int]
) -> None:
    cine = decode_cine(Path(get_testdata_file(name, download=False) or ""))
    assert cine.frames.shape == (frames, *shape)
    assert cine.frames.dtype == np.uint8
    assert cine.frames.std() > 5  # an image, not a constant


def test_real_cine_goes_through_the_pipeline(tmp_path: Path) -> None:
    directory = write_tiny_model(tmp_path)
    cine = decode_cine(Path(get_testdata_file("examples_ybr_color.dcm", download=False) or ""))
    findings, masks = segment_cine(
        cine, OnnxRuntimeBackend(tmp_path), load_contract(directory / "1")
    )
    assert [f.index for f in findings] == list(range(30))
    assert masks.shape == cine.frames.shape
    for finding, mask in zip(findings, masks, strict=True):
        assert finding.area_px == int(mask.sum())
        assert finding.present == bool(mask.any())


def test_masks_land_on_the_source_grid(tmp_path: Path) -> None:
    """The tiny model thresholds at half scale: a bright square must come back where it was."""
    directory = write_tiny_model(tmp_path)
    frames = np.zeros((2, 120, 160), dtype=np.uint8)
    frames[0, 30:90, 40:100] = 255
    cine = Cine(frames, pixel_size_mm=(0.5, 0.25))
    findings, masks = segment_cine(
        cine, OnnxRuntimeBackend(tmp_path), load_contract(directory / "1")
    )
    expected = frames[0] > 127
    overlap = (masks[0] & expected).sum() / expected.sum()
    assert overlap > 0.95
    assert abs(int(masks[0].sum()) - int(expected.sum())) / expected.sum() < 0.1
    assert findings[0].present
    assert not findings[1].present
    assert findings[0].area_mm2 == pytest.approx(masks[0].sum() * 0.125)
    assert findings[1].area_mm2 is None


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        (100_000, "more than the pipeline takes"),  # refused before any frame is decoded
        (31, "30 frames decoded, Number of Frames says 31"),
    ],
)
def test_a_cine_whose_frame_count_is_wrong_or_enormous_is_refused(
    frames: int, reason: str, tmp_path: Path
) -> None:
    cine = dcmread(get_testdata_file("examples_ybr_color.dcm", download=False) or "")
    cine.NumberOfFrames = frames
    path = tmp_path / "cine.dcm"
    cine.save_as(path)
    with pytest.raises(UnsupportedFrames, match=reason):
        decode_cine(path)
