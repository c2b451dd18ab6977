"""The ultrasound-frame pipeline: decode a cine, segment every frame, measure what is found.

Frames of any photometric interpretation (monochrome, RGB, YBR from JPEG, palette colour) are
decoded by pydicom's pixel handlers (pylibjpeg for compressed syntaxes) and reduced to
luminance. Each frame is resized to the model's patch, run in batches, and its mask is resized
back onto the source frame, where its area is measured with the physical pixel size of the
ultrasound region (PS3.3 C.8.5.5, Sequence of Ultrasound Regions) or Pixel Spacing.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import iter_pixels
from scipy import ndimage

from appliance.inference.backend import InferenceBackend
from appliance.inference.contract import ModelContract
from appliance.inference.resize import nearest_zoom

BATCH = 16
MIN_AREA_PX = 40  # in the model's patch; smaller predictions are noise
# A frame is called empty with confidence when not even its MIN_AREA_PX likeliest pixels
# reach this probability of the target; between that and a finding, the frame is uncertain.
ABSENT_BELOW = 0.3
_CENTIMETRE = 3  # Physical Units X/Y Direction (0018,6024): 3 = cm
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Larger cines are refused before any decoding: 1,000 frames of 1024 x 768 fit (786 MB).
MAX_CINE_PIXELS = 1_000 * 1024 * 768


class UnsupportedFrames(ValueError):
    """The data set has no frames this pipeline can read; the message says why."""


@dataclass(frozen=True)
class Cine:
    frames: NDArray[np.uint8]  # (frames, rows, columns), luminance
    pixel_size_mm: tuple[float, float] | None  # (row, column), when the data says


@dataclass(frozen=True)
class FrameFinding:
    index: int
    present: bool
    area_mm2: float | None
    area_px: int
    confidence: float  # present: mean probability over the outline; else 1 - the evidence
    absent: bool  # confidently empty: no pixel group near the target's probability
    area_fraction: float  # of the frame (the model's patch)


def _pixel_size(dataset: Dataset) -> tuple[float, float] | None:
    for region in dataset.get("SequenceOfUltrasoundRegions", []):
        units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
        if units == (_CENTIMETRE, _CENTIMETRE):
            return (abs(float(region.PhysicalDeltaY)) * 10, abs(float(region.PhysicalDeltaX)) * 10)
    spacing = dataset.get("PixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing else None


def decode_cine(path: Path) -> Cine:
    """The cine's frames as 8-bit luminance, decoded one frame at a time so that a long cine
    costs its luminance frames and one decoded frame, never the whole decoded colour cine."""
    try:
        return _decode(path)
    except UnsupportedFrames:
        raise
    except Exception as exc:  # pydicom and numpy meet hostile data with any exception type
        raise UnsupportedFrames(
            f"the frames cannot be decoded: {type(exc).__name__}: {exc}"
        ) from exc


def _decode(path: Path) -> Cine:
    dataset = dcmread(path, defer_size=4096)  # the pixel data stays on disk
    if "PixelData" not in dataset:
        raise UnsupportedFrames("the data set has no pixel data")
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    if min(count, rows, columns) < 1:
        raise UnsupportedFrames(f"{count} frames of {rows} x {columns} pixels")
    if count * rows * columns > MAX_CINE_PIXELS:
        raise UnsupportedFrames(
            f"{count} frames of {rows} x {columns} pixels: more than the pipeline takes "
            f"({MAX_CINE_PIXELS:,} pixels)"
        )
    palette = str(dataset.get("PhotometricInterpretation", "")) == "PALETTE COLOR"

    def luminance() -> Iterator[NDArray[np.float32] | NDArray[np.uint8]]:
        for index, frame in enumerate(iter_pixels(path)):
            if index == count:
                raise UnsupportedFrames(f"more frames than Number of Frames ({count})")
            if palette:
                frame = apply_color_lut(frame, dataset)
            if frame.ndim == 3:  # colour: reduce to luminance
                frame = frame[..., :3].astype(np.float32) @ _LUMA
            if frame.shape != (rows, columns):
                raise UnsupportedFrames(
                    f"frame {index + 1} is {frame.shape}, not {rows} x {columns}"
                )
            yield frame

    frames = np.empty((count, rows, columns), dtype=np.uint8)
    decoded = 0
    low, high = 0.0, 255.0
    if str(dataset.get("BitsAllocated", 8)) != "8":  # scale by the whole cine's range: a pass
        low, high = np.inf, -np.inf
        for frame in luminance():
            low, high = min(low, float(frame.min())), max(high, float(frame.max()))
    scale = 255 / max(high - low, 1e-6)
    for decoded, frame in enumerate(luminance(), start=1):
        frames[decoded - 1] = np.clip(np.rint((frame - low) * scale), 0, 255)
    if decoded != count:
        raise UnsupportedFrames(f"{decoded} frames decoded, Number of Frames says {count}")
    return Cine(frames, _pixel_size(dataset))


def segment_cine(
    cine: Cine, backend: InferenceBackend, contract: ModelContract
) -> tuple[list[FrameFinding], NDArray[np.bool_]]:
    """Per-frame findings and masks on the source frames' grid."""
    patch = contract.patch
    count, rows, columns = cine.frames.shape
    if contract.intensity is None:
        raise UnsupportedFrames("the model has no intensity scale for frames")
    scale = contract.intensity.scale or 1.0
    zoom_in = (patch[0] / rows, patch[1] / columns)
    masks = np.zeros(cine.frames.shape, dtype=bool)
    findings = []
    for start in range(0, count, BATCH):
        chunk = cine.frames[start : start + BATCH]
        batch = np.stack(
            [ndimage.zoom(frame.astype(np.float32), zoom_in, order=1) for frame in chunk]
        )
        logits = backend.infer(contract.ref, (batch * scale)[:, None].astype(np.float32))
        probabilities = _target_probability(logits)
        for offset, predicted in enumerate(logits.argmax(1) > 0):
            index = start + offset
            target = probabilities[offset]
            present = int(predicted.sum()) >= MIN_AREA_PX
            evidence = float(np.partition(target.ravel(), -MIN_AREA_PX)[-MIN_AREA_PX])
            confidence = float(target[predicted].mean()) if present else 1.0 - evidence
            if present:
                back = nearest_zoom(
                    predicted.astype(np.uint8), (rows / patch[0], columns / patch[1])
                )[:rows, :columns]
                masks[index, : back.shape[0], : back.shape[1]] = back.astype(bool)
            area_px = int(masks[index].sum())
            area_mm2 = (
                area_px * cine.pixel_size_mm[0] * cine.pixel_size_mm[1]
                if cine.pixel_size_mm and present
                else None
            )
            findings.append(
                FrameFinding(
                    index, present, area_mm2, area_px, confidence,
                    absent=not present and evidence < ABSENT_BELOW,
                    area_fraction=float(predicted.sum()) / predicted.size if present else 0.0,
                )
            )  # fmt: skip
    return findings, masks


def _target_probability(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per pixel the probability of any foreground class (softmax over the channels)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probability: NDArray[np.float32] = shifted[:, 1:].sum(axis=1) / shifted.sum(axis=1)
    return probability
