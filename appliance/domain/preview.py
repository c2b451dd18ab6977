"""What the dashboard shows of a job's findings without a viewer: per routed series the SR's
summary, its measurements as a table, and key slices or frames with the outlines drawn (the
images are made by the worker, so the page needs no script and the dashboard no pixels)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class PreviewRow:
    finding: str
    quantity: str  # Volume, Long axis, Area
    value: str  # with its unit, as the SR states it
    review: str  # why it is of low confidence; empty for a plain finding


@dataclass(frozen=True)
class PreviewImage:
    caption: str
    file: str  # the PNG's name in the job's preview folder


@dataclass(frozen=True)
class PreviewSection:
    title: str  # which series, which pipeline
    summary: str  # the SR's summary, word for word
    rows: tuple[PreviewRow, ...]
    images: tuple[PreviewImage, ...]
