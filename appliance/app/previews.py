"""The shelf of findings previews (`domain.preview`): one folder per job beside the outbox,
written by the worker when it encodes the results, read by the dashboard's job page. Written
durably and privately, like the results themselves: the images hold patient pixels."""

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from appliance.dicom.spool import private_directory, write_durably
from appliance.domain.preview import PreviewImage, PreviewRow, PreviewSection

_INDEX = "preview.json"


class PreviewShelf:
    def __init__(self, outbox: Path) -> None:
        self._root = outbox / ".previews"

    def put(self, job_id: int, rendered: Sequence[tuple[PreviewSection, list[bytes]]]) -> None:
        """Store a job's sections with their images, numbered across the sections."""
        folder = private_directory(private_directory(self._root) / str(job_id))
        staging = private_directory(self._root / ".staging")
        sections, number = [], 0
        for section, pngs in rendered:
            images = []
            for image, png in zip(section.images, pngs, strict=True):
                name = f"{number}.png"
                write_durably(folder / name, staging, self._root, (png,))
                images.append(replace(image, file=name))
                number += 1
            sections.append(asdict(replace(section, images=tuple(images))))
        index = json.dumps(sections).encode()
        write_durably(folder / _INDEX, staging, self._root, (index,))

    def sections(self, job_id: int) -> list[PreviewSection]:
        """A job's preview; empty when it has none (not run yet, failed, or made before
        previews existed)."""
        try:
            stored = json.loads((self._root / str(job_id) / _INDEX).read_bytes())
        except FileNotFoundError:
            return []
        return [
            PreviewSection(
                item["title"],
                item["summary"],
                tuple(PreviewRow(**row) for row in item["rows"]),
                tuple(PreviewImage(**image) for image in item["images"]),
            )
            for item in stored
        ]

    def image(self, job_id: int, number: int) -> bytes | None:
        """One of a job's PNGs, by its number; None when there is no such image."""
        try:
            return (self._root / str(job_id) / f"{number}.png").read_bytes()
        except FileNotFoundError:
            return None
