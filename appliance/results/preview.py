"""The findings preview of one run (`domain.preview`): the SR's summary and measurements, and
key images rendered with the outlines in each segment's display colour: for CT, the slices
of the largest lesions (plain findings before those of low confidence) with each long axis
drawn in green (or, with no lesion, the slice with the most segmented tissue) in an
abdominal window; for ultrasound, the frames with the largest
outlines (or the middle frame, with none).
"""

import io
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

from appliance.domain.findings import Segment
from appliance.domain.preview import PreviewImage, PreviewRow, PreviewSection
from appliance.results.findings import CTFindings, UltrasoundFindings
from appliance.results.report import stated
from appliance.results.summary import ct_summary, ultrasound_summary

_WINDOW = (-160.0, 240.0)  # abdomen: level 40, width 400 HU
_MOST_IMAGES = 6
_GREY = (128, 128, 128)
_LINE = (0, 230, 0)  # a measurement line, apart from every outline colour
_SIDE = 384  # images are enlarged (whole pixels, nearest) to at least this across

Rendered = tuple[PreviewSection, list[bytes]]  # images named 0.png, 1.png, ... in order
_Line = tuple[Sequence[tuple[float, float]], tuple[int, int, int]]  # points, colour


def _png(
    rgb: NDArray[np.uint8],
    lines: Sequence[_Line] = (),
) -> bytes:
    scale = max(1, _SIDE // max(rgb.shape[:2]))
    image = Image.fromarray(np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)), "RGB")
    draw = ImageDraw.Draw(image)
    for points, colour in lines:
        draw.line([(x * scale, y * scale) for x, y in points], fill=colour, width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _outlined(
    grey: NDArray[np.uint8], labels: NDArray[np.uint8], colours: dict[int, tuple[int, int, int]]
) -> NDArray[np.uint8]:
    """`grey` as RGB with each labelled region's edge pixels painted in its colour."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for number, colour in colours.items():
        region = labels == number
        if not region.any():
            continue
        edge = region & ~ndimage.binary_erosion(region)
        rgb[edge] = colour
    return rgb


def _colours(segments: Sequence[Segment]) -> dict[int, tuple[int, int, int]]:
    return {segment.number: segment.colour or _GREY for segment in segments}


def ct_preview(title: str, hu: NDArray[np.floating], findings: CTFindings) -> Rendered:
    """`hu`: the series in HU, on the grid and in the order of `findings.labels`."""
    segments = {segment.number: segment for segment in findings.segments}
    rows = []
    for measured in findings.measurements:
        segment = segments[measured.segment]
        review = "; ".join(segment.review)
        rows.append(
            PreviewRow(segment.label, "Volume", f"{stated(measured.volume_ml, 'ml')} mL", review)
        )
        if measured.longest_axial_diameter_mm is not None:
            diameter = stated(measured.longest_axial_diameter_mm, "mm")
            rows.append(PreviewRow(segment.label, "Long axis", f"{diameter} mm", review))
    low, high = _WINDOW
    colours = _colours(findings.segments)
    slices = len(findings.labels)
    drawn = sorted(
        (
            (measured.long_axis, measured.longest_axial_diameter_mm, segments[measured.segment])
            for measured in findings.measurements
            if measured.long_axis is not None and measured.longest_axial_diameter_mm is not None
        ),
        key=lambda item: (bool(item[2].review), -item[1]),  # plain findings first, largest first
    )[:_MOST_IMAGES]
    chosen: list[tuple[int, str, list[_Line]]] = [
        (
            line.slice_index,
            f"{segment.label}: long axis {stated(diameter, 'mm')} mm "
            f"(slice {line.slice_index + 1} of {slices})",
            [(line.points, _LINE)],
        )
        for line, diameter, segment in drawn
    ]
    if not chosen:
        busiest = int(np.count_nonzero(findings.labels.reshape(slices, -1), axis=1).argmax())
        chosen.append((busiest, f"slice {busiest + 1} of {slices}", []))
    images, pngs = [], []
    for index, (slice_index, caption, lines) in enumerate(chosen):
        grey = np.clip((hu[slice_index] - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)
        pngs.append(_png(_outlined(grey, findings.labels[slice_index], colours), lines))
        images.append(PreviewImage(caption, f"{index}.png"))
    section = PreviewSection(title, ct_summary(findings), tuple(rows), tuple(images))
    return section, pngs


def ultrasound_preview(
    title: str, frames: NDArray[np.uint8], findings: UltrasoundFindings
) -> Rendered:
    """`frames`: the cine's luminance frames, (frames, rows, columns)."""
    segment = findings.segment
    rows = []
    for area in findings.present:
        value = (
            f"{stated(area.area_mm2, 'mm2')} mm2"
            if area.area_mm2 is not None
            else f"{area.area_px} pixels"
        )
        rows.append(
            PreviewRow(f"{segment.label} frame {area.frame}", "Area", value, "; ".join(area.review))
        )
    largest = sorted(findings.present, key=lambda area: -area.area_px)[:_MOST_IMAGES]
    images, pngs = [], []
    colour = segment.colour or _GREY
    for index, area in enumerate(sorted(largest, key=lambda area: area.frame)):
        rgb = np.repeat(frames[area.frame - 1][..., None], 3, axis=-1)
        pngs.append(_png(rgb, [(area.outline, colour)] if area.outline else []))
        images.append(PreviewImage(f"frame {area.frame} of {len(frames)}", f"{index}.png"))
    if not pngs:
        middle = len(frames) // 2
        pngs.append(_png(np.repeat(frames[middle][..., None], 3, axis=-1)))
        images.append(
            PreviewImage(f"frame {middle + 1} of {len(frames)}: no {segment.label} found", "0.png")
        )
    summary = ultrasound_summary(findings, len(frames))
    return PreviewSection(title, summary, tuple(rows), tuple(images)), pngs
