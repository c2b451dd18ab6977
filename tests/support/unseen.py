"""The reference models scored on the independent generators (`unseen_ct`, `unseen_ultrasound`)
through the serving code: what CI asserts, and what the model cards report.

    .venv/bin/python -m tests.support.unseen [--cards]

prints the figures; with --cards it writes them into the cards of model_repository/.
"""

import argparse
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.app.pipelines import Host, contrast, run_volume
from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.catalog import load_catalog
from appliance.inference.measurements import number_lesions
from appliance.inference.ultrasound import Cine, segment_cine
from appliance.phantoms.ct import CTPhantom, Grid, Phase
from appliance.phantoms.dicom import write_ct_series
from tests.support.unseen_ct import LIVER, Study, detectability, unseen_study
from tests.support.unseen_ultrasound import PIXEL_MM, unseen_cine

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CT_SEEDS = range(800_000, 800_004)
US_SEEDS = range(700_000, 700_030)
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "aorta", "ivc", "vertebrae")
DETECTABLE_MM = 10.0
# How far a lesion's mean density lies from the liver around it, as the appliance measures a
# finding's contrast (`pipelines.contrast`), in bands: where the lesions that are missed lie.
CONTRAST_BANDS_HU = {"30 HU or more": 30.0, "15 to 30 HU": 15.0, "under 15 HU": 0.0}
# How visible a lesion is at all: the ideal observer's d' (`unseen_ct.detectability`), in bands
# around Rose's criterion (about 5 for reliable detection).
DETECTABILITY_BANDS = {"10 or more": 10.0, "5 to 10": 5.0, "under 5": 0.0}


@dataclass(frozen=True)
class UltrasoundScores:
    dice: float  # pooled over the frames that hold the target
    false_positive_frames: float  # share of the frames without it where a target was found
    frames: int


@dataclass(frozen=True)
class CTScores:
    dice: dict[str, float]  # per organ, pooled over the studies that have it
    lesions_detected: float  # of the lesions over 10 mm
    false_lesions_per_study: float
    studies: int
    false_lesions_stated_per_study: float = 0.0  # not flagged for review: stated as findings
    # per band of CONTRAST_BANDS_HU: (detected, lesions over 10 mm)
    detected_by_contrast: dict[str, tuple[int, int]] = field(default_factory=dict)
    # per band of DETECTABILITY_BANDS: (detected, lesions over 10 mm)
    detected_by_detectability: dict[str, tuple[int, int]] = field(default_factory=dict)
    organs_stated_where_absent: int = 0  # found in a study without it, and not flagged
    # of the lesions over 10 mm, found by a lesion stated as a finding: what a site that
    # withholds findings for review receives
    lesions_detected_stated: float = 0.0


def ultrasound_scores(
    seeds: Iterable[int] = US_SEEDS, repository: Path = REPOSITORY
) -> UltrasoundScores:
    catalog = load_catalog(repository)
    (model,) = catalog.pipelines["us"].models
    contract = catalog.contract(model)
    backend = OnnxRuntimeBackend(repository, threads=2)
    overlap = total = 0.0
    negatives = false_positives = frames = 0
    for seed in seeds:
        cine = unseen_cine(seed)
        findings, masks = segment_cine(Cine(cine.frames, (PIXEL_MM, PIXEL_MM)), backend, contract)
        for finding, predicted, truth in zip(findings, masks, cine.masks, strict=True):
            frames += 1
            if truth.any():
                overlap += 2 * float((predicted & truth).sum())
                total += float(predicted.sum() + truth.sum())
            else:
                negatives += 1
                false_positives += int(finding.present)
    return UltrasoundScores(overlap / max(total, 1.0), false_positives / max(negatives, 1), frames)


def ct_scores(seeds: Iterable[int] = CT_SEEDS, repository: Path = REPOSITORY) -> CTScores:
    """The `ct` pipeline from DICOM files: organ Dice on the source grid, and per lesion over
    10 mm whether any reported lesion touches it; a reported lesion touching none is false."""
    catalog = load_catalog(repository)
    pipeline = catalog.pipelines["ct"]
    organs = {
        label.name: label.value for label in catalog.contract(pipeline.stages[0].model).labels
    }
    backend = OnnxRuntimeBackend(repository, threads=2)
    overlap = dict.fromkeys(ORGANS, 0.0)
    total = dict.fromkeys(ORGANS, 0.0)
    detected = detectable = false = stated = detected_stated = studies = 0
    by_contrast = dict.fromkeys(CONTRAST_BANDS_HU, (0, 0))
    by_detectability = dict.fromkeys(DETECTABILITY_BANDS, (0, 0))
    absent_stated = 0
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            study = unseen_study(seed)
            phantom = CTPhantom(
                study.hu, study.organs, np.zeros(study.hu.shape, np.uint8), (),
                Grid(study.hu.shape, study.spacing), Phase.PORTAL_VENOUS,
            )  # fmt: skip
            paths = write_ct_series(phantom, Path(scratch) / str(seed))
            run = run_volume(pipeline, catalog, paths, backend)
            studies += 1
            for name in ORGANS:
                predicted, truth = (
                    run.stages["organs"] == organs[name],
                    study.organs == organs[name],
                )
                overlap[name] += 2 * float((predicted & truth).sum())
                total[name] += float(predicted.sum() + truth.sum())
            absent_stated += sum(
                1
                for segment in run.findings.segments
                if segment.stage == "organs"
                and segment.tracking_id in ORGANS
                and not segment.review
                and not (study.organs == organs[segment.tracking_id]).any()
            )
            lesions = [s for s in run.findings.segments if s.stage != "organs"]
            found = np.isin(run.findings.labels, [s.number for s in lesions])
            outcome = _lesions(found, run.findings.labels, study.lesions, study.spacing)
            detected += sum(outcome.detected.values())
            detectable += len(outcome.detected)
            false += outcome.false
            for number, hit in outcome.detected.items():
                lesion = outcome.numbered == number
                for bands, band in (
                    (by_contrast, _contrast_band(study, outcome.numbered, number)),
                    (by_detectability, _band(DETECTABILITY_BANDS, detectability(study, lesion))),
                ):
                    found_before, total_before = bands[band]
                    bands[band] = (found_before + int(hit), total_before + 1)
            plain = np.isin(run.findings.labels, [s.number for s in lesions if not s.review])
            as_stated = _lesions(plain, run.findings.labels, study.lesions, study.spacing)
            stated += as_stated.false
            detected_stated += sum(as_stated.detected.values())
    return CTScores(
        {name: overlap[name] / total[name] for name in ORGANS if total[name]},
        detected / max(detectable, 1),
        false / max(studies, 1),
        studies,
        stated / max(studies, 1),
        by_contrast,
        by_detectability,
        absent_stated,
        detected_stated / max(detectable, 1),
    )


@dataclass(frozen=True)
class _LesionOutcome:
    numbered: NDArray[np.uint16]  # the true lesions, numbered
    detected: dict[int, bool]  # per true lesion over 10 mm, whether a reported one touches it
    false: int  # reported lesions touching none


def _lesions(
    found: NDArray[np.bool_],
    labels: NDArray[np.uint8],
    truth: NDArray[np.uint16],
    spacing: tuple[float, float, float],
) -> _LesionOutcome:
    """The true lesions over 10 mm of one study, each found or not, and the false ones."""
    numbered, measured = number_lesions(truth > 0, spacing)
    detected = {
        m.tracking_number: bool(found[numbered == m.tracking_number].any())
        for m in measured
        if m.longest_axial_diameter_mm > DETECTABLE_MM
    }
    false = sum(1 for number in np.unique(labels[found]) if not (truth[labels == number] > 0).any())
    return _LesionOutcome(numbered, detected, false)


def _contrast_band(study: Study, numbered: NDArray[np.uint16], number: int) -> str:
    """The band of CONTRAST_BANDS_HU a true lesion's contrast to the liver around it falls in."""
    (box,) = ndimage.find_objects((numbered == number).astype(np.uint8))
    host = Host(study.organs, (LIVER,), 1)  # the liver that no true lesion covers
    measured = contrast(numbered.astype(np.uint8), number, box, study.hu, host)
    return _band(CONTRAST_BANDS_HU, abs(measured or 0.0))


def _band(bands: dict[str, float], value: float) -> str:
    """The first of `bands` (name: its lowest value, highest first) that `value` reaches."""
    return next(band for band, low in bands.items() if value >= low)


def _card_section(title: str, rows: dict[str, float | str]) -> str:
    lines = "\n".join(
        f"| {name} | {value if isinstance(value, str) else f'{value:.3f}'} |"
        for name, value in rows.items()
    )
    return f"## {title}\n| metric | value |\n|---|---|\n{lines}\n"


def _write_card(model: str, section: str) -> None:
    card = REPOSITORY / model / "1" / "card.md"
    text = card.read_text(encoding="utf-8")
    text = re.sub(
        r"\n## Measured on the independent test generator.*?(?=\n## |\Z)", "", text, flags=re.S
    )
    card.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cards", action="store_true", help="write the figures into the cards")
    cards = parser.parse_args().cards
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    us = ultrasound_scores()
    print(us)
    if cards:
        _write_card(
            "us_frame",
            _card_section(
                f"Measured on the independent test generator (tests/support/unseen_ultrasound.py, "
                f"{us.frames} frames of cines {US_SEEDS.start} to {US_SEEDS.stop - 1}, {today})",
                {"dice": us.dice, "false_positive_frames": us.false_positive_frames},
            ),
        )
    ct = ct_scores()
    print(ct)
    if cards:
        title = (
            f"Measured on the independent test generator (tests/support/unseen_ct.py, {ct.studies} "
            f"studies {CT_SEEDS.start} to {CT_SEEDS.stop - 1}, through the ct pipeline, {today})"
        )
        _write_card("organ_ct", _card_section(title, {f"dice_{k}": v for k, v in ct.dice.items()}))
        _write_card(
            "lesion_ct",
            _card_section(
                title,
                {
                    "lesions_over_10mm_detected": ct.lesions_detected,
                    "lesions_over_10mm_detected_by_a_stated_lesion": ct.lesions_detected_stated,
                    "false_lesions_per_study": ct.false_lesions_per_study,
                    "false_lesions_stated_per_study": ct.false_lesions_stated_per_study,
                    **{
                        f"lesions_over_10mm_detected, contrast to the liver {band}": (
                            f"{found} of {total}"
                        )
                        for band, (found, total) in ct.detected_by_contrast.items()
                    },
                    **{
                        f"lesions_over_10mm_detected, ideal observer's d' {band}": (
                            f"{found} of {total}"
                        )
                        for band, (found, total) in ct.detected_by_detectability.items()
                    },
                },
            ),
        )


if __name__ == "__main__":
    main()
