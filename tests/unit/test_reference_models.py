"""The committed reference models: servable, and meeting their targets on fixed-seed phantoms.

Inference only (ONNX Runtime); the phantom seeds here are outside every training range.
"""

from pathlib import Path

import pytest

from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.contract import load_contract
from appliance.inference.repository import check_model, model_directories
from appliance.inference.ultrasound import Cine, segment_cine
from appliance.phantoms.ultrasound import generate_cine

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CI_SEEDS = range(300_000, 300_006)


@pytest.mark.parametrize("directory", model_directories(REPOSITORY), ids=lambda p: p.name)
def test_every_committed_model_passes_its_checks(directory: Path) -> None:
    assert check_model(directory) == []


def test_us_frame_meets_its_targets() -> None:
    contract = load_contract(REPOSITORY / "us_frame")
    backend = OnnxRuntimeBackend(REPOSITORY, threads=2)
    overlap = total = 0.0
    negatives = called_negative = 0
    for seed in CI_SEEDS:
        phantom = generate_cine(seed, frames=10, size=contract.patch[0])
        findings, masks = segment_cine(
            Cine(phantom.frames, (phantom.pixel_spacing_mm,) * 2), backend, contract
        )
        for finding, predicted, truth in zip(findings, masks, phantom.masks, strict=True):
            if truth.any():
                overlap += 2 * float((predicted & truth).sum())
                total += float(predicted.sum() + truth.sum())
            else:
                negatives += 1
                called_negative += int(not finding.present)
    assert overlap / total >= 0.90
    assert called_negative / negatives >= 0.95
