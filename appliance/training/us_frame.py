"""Train the reference ultrasound-frame model: a 2D U-Net that outlines a cyst-like structure.

Frames come from `phantoms.ultrasound` with everything randomised (probe, gain, speckle, the
target's shape, vessels, shadows, cines without a target); training and test phantoms use
disjoint seed ranges, so the reported metrics are on phantoms the model never saw. Random
flips and grey-level curves widen what it sees further.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from appliance.inference.contract import ModelContract
from appliance.inference.ultrasound import MIN_AREA_PX
from appliance.phantoms.ultrasound import generate_cine
from appliance.training.domains import ABDOMINAL_US
from appliance.training.publish import export_onnx, publish
from appliance.training.unet import UNet
from appliance.training.volumes import CHECKPOINT_EVERY, resume

PATCH = 256
TRAIN_SEEDS = range(0, 300)
TRAIN_FRAMES_PER_CINE = 8
TEST_SEEDS = range(100_000, 100_040)


@dataclass(frozen=True)
class Metrics:
    dice: float
    positive_frames_found: float
    negative_frames_called_negative: float
    frames: int


def frames_from(
    seeds: range, frames_per_cine: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    images, masks = [], []
    for seed in seeds:
        cine = generate_cine(seed, frames=frames_per_cine, size=PATCH, present_fraction=None)
        images.append(cine.frames.astype(np.float32) / 255.0)
        masks.append(cine.masks.astype(np.int64))
    return np.concatenate(images)[:, None], np.concatenate(masks)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probability = torch.softmax(logits, dim=1)[:, 1]
    truth = (target == 1).float()
    overlap = (probability * truth).sum()
    return 1 - (2 * overlap + 1) / (probability.sum() + truth.sum() + 1)


def evaluate(model: nn.Module, images: NDArray[np.float32], masks: NDArray[np.int64]) -> Metrics:
    model.eval()
    overlap = total = 0.0
    found = positives = negatives = called_negative = 0
    with torch.no_grad():
        for start in range(0, len(images), 16):
            logits = model(torch.from_numpy(images[start : start + 16]))
            predicted = logits.argmax(1).numpy().astype(bool)
            truth = masks[start : start + 16].astype(bool)
            for p, t in zip(predicted, truth, strict=True):
                present = p.sum() >= MIN_AREA_PX
                if t.any():
                    positives += 1
                    found += int(present)
                    overlap += 2 * float((p & t).sum())
                    total += float(p.sum() + t.sum())
                else:
                    negatives += 1
                    called_negative += int(not present)
    return Metrics(
        dice=overlap / total if total else 0.0,
        positive_frames_found=found / positives if positives else 1.0,
        negative_frames_called_negative=called_negative / negatives if negatives else 1.0,
        frames=len(images),
    )


def train(
    output: Path, checkpoint: Path, seed: int = 20261124, steps: int = 600, batch: int = 8
) -> Metrics:
    """Train (resuming from `checkpoint`, saved every `CHECKPOINT_EVERY` steps), evaluate on
    held-out phantoms and export `output/1/model.onnx`."""
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = UNet(dims=2, in_channels=1, classes=2, base=16, levels=4)
    done = resume(model, checkpoint)
    rng = np.random.default_rng(seed + done)
    images, masks = frames_from(TRAIN_SEEDS, frames_per_cine=TRAIN_FRAMES_PER_CINE)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    for _ in range(min(done, steps)):  # the learning rate where the run left it
        optimiser.step()
        schedule.step()
    cross_entropy = nn.CrossEntropyLoss()
    started = time.monotonic()
    progress = tqdm(range(done, steps), desc="us_frame", unit="step", initial=done, total=steps)
    model.train()
    for step in progress:
        index = rng.integers(0, len(images), size=batch)
        x = torch.from_numpy(images[index])
        y = torch.from_numpy(masks[index])
        if rng.random() < 0.5:
            x, y = torch.flip(x, dims=[3]), torch.flip(y, dims=[2])
        x = x.clamp(0, 1) ** float(np.exp(rng.normal(0, 0.3)))  # another grey-level curve
        logits = model(x)
        loss = cross_entropy(logits, y) + dice_loss(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "step": step + 1}, checkpoint)
    test_images, test_masks = frames_from(TEST_SEEDS, frames_per_cine=10)
    metrics = evaluate(model, test_images, test_masks)
    export_onnx(model, output / "1" / "model.onnx", CONTRACT)
    publish_model(output, metrics, steps, seed)
    minutes = (time.monotonic() - started) / 60
    print(f"us_frame: {metrics} after {steps} steps in {minutes:.1f} min")
    return metrics


CONTRACT = ModelContract.model_validate({
    "name": "us_frame", "version": 1, "modality": "US", "synthetic": True,
    "input": {"name": "image", "dtype": "float32", "shape": [-1, 1, PATCH, PATCH]},
    "output": {"name": "logits", "dtype": "float32", "shape": [-1, 2, PATCH, PATCH]},
    "patch": [PATCH, PATCH],
    "intensity": {"kind": "scale", "scale": 1 / 255},
    "labels": [{
        "value": 1, "name": "cyst",
        "category": {"scheme": "SCT", "value": "49755003",
                     "meaning": "Morphologically Abnormal Structure"},
        "type": {"scheme": "SCT", "value": "441457006", "meaning": "Cyst"},
        # The phantoms' targets fill at most about 5 % of a frame; an outline over a
        # sixth of it is not one this model was made to draw.
        "plausible": {"area_fraction": [0.0, 0.15], "min_confidence": 0.75},
    }],
    "domain": ABDOMINAL_US,
})  # fmt: skip

# Dice on varied phantoms, whose cysts can be 1 cm across with echoes inside and a shadow over
# them; the plain phantoms of version 1 reached 0.99. The independent generator's bar is 0.75.
TARGETS = {"dice": 0.85, "negative_frames_called_negative": 0.95}


def publish_model(output: Path, metrics: Metrics, steps: int, seed: int) -> None:
    publish(
        output,
        CONTRACT,
        intended_use=(
            "Outline a hypoechoic, cyst-like structure in each frame of a B-mode cine and say "
            "whether the frame contains it. A stand-in for validated ultrasound-frame models."
        ),
        training=(
            f"2D U-Net (4 levels, 16 base channels), {steps} AdamW steps from seed {seed}, "
            f"cross-entropy plus Dice loss, on {len(TRAIN_SEEDS) * TRAIN_FRAMES_PER_CINE} frames "
            f"of {len(TRAIN_SEEDS)} randomised phantom cines (appliance.phantoms.ultrasound, "
            f"seeds {TRAIN_SEEDS.start} to {TRAIN_SEEDS.stop - 1}), random flips and grey-level "
            "curves. Tested on "
            f"{metrics.frames} frames of cines with seeds {TEST_SEEDS.start} to "
            f"{TEST_SEEDS.stop - 1}. Reproduce with `appliance train us_frame`."
        ),
        metrics={
            "dice": metrics.dice,
            "positive_frames_found": metrics.positive_frames_found,
            "negative_frames_called_negative": metrics.negative_frames_called_negative,
        },
        targets=TARGETS,
    )
