"""What the 3D models share: foreground-biased patch sampling, the soft Dice loss, a
checkpointed training loop, and the model behind the serving pipeline's backend protocol."""

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from tqdm import tqdm

from appliance.training.augmentation import Volume

CHECKPOINT_EVERY = 25
LEARNING_RATE = 2e-3


class TorchBackend:
    """A model in training, behind `InferenceBackend.infer`, so evaluation runs the same
    sliding window as serving."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model

    def infer(self, model: str, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        with torch.no_grad():
            logits: NDArray[np.float32] = self._model(torch.from_numpy(batch)).numpy()
        return logits


def foreground_crop(rng: np.random.Generator, volume: Volume, patch: int) -> Volume:
    """A cube of side `patch`, centred two times in three on a voxel of a random foreground
    class present (so small structures are seen), otherwise anywhere; padded if smaller."""
    image, labels = volume
    short = [max(patch - n, 0) for n in labels.shape]
    if any(short):
        image = np.pad(image, [(0, s) for s in short])
        labels = np.pad(labels, [(0, s) for s in short])
    present = [int(c) for c in np.unique(labels) if c > 0]
    if present and rng.random() < 2 / 3:
        points = np.argwhere(labels == present[rng.integers(len(present))])
        centre = points[rng.integers(len(points))]
    else:
        centre = np.array([rng.integers(0, n) for n in labels.shape])
    start = [
        int(np.clip(c - patch // 2, 0, n - patch))
        for c, n in zip(centre, labels.shape, strict=True)
    ]
    window = tuple(slice(s, s + patch) for s in start)
    return image[window], labels[window]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """Soft Dice over the foreground classes of a 3D batch."""
    probability = torch.softmax(logits, dim=1)[:, 1:]
    truth = nn.functional.one_hot(target, classes).permute(0, 4, 1, 2, 3)[:, 1:].float()
    overlap = (probability * truth).sum(dim=(0, 2, 3, 4))
    sizes = probability.sum(dim=(0, 2, 3, 4)) + truth.sum(dim=(0, 2, 3, 4))
    return 1 - ((2 * overlap + 1) / (sizes + 1)).mean()


def resume(model: nn.Module, checkpoint: Path) -> int:
    """Load the checkpoint's weights if there is one; the number of steps already done."""
    if not checkpoint.exists():
        return 0
    state = torch.load(checkpoint, weights_only=True)
    model.load_state_dict(state["model"])
    return int(state["step"])  # the optimiser restarts: its moments are not kept


def fit(
    name: str,
    model: nn.Module,
    volumes: Sequence[Volume],
    patch: int,
    classes: int,
    steps: int,
    done: int,
    checkpoint: Path,
    rng: np.random.Generator,
    batch: int = 2,
    class_weights: Sequence[float] | None = None,
    decay_from: int | None = None,
    augmented: Callable[[np.random.Generator, Volume], Volume] | None = None,
) -> None:
    """Train from step `done` to `steps`: cross-entropy plus Dice on foreground crops, each
    passed through `augmented` if given. With `decay_from`, the learning rate falls on a
    cosine from that step to zero at `steps`."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    cross_entropy = nn.CrossEntropyLoss(weight=weights)
    model.train()
    progress = tqdm(range(done, steps), desc=name, unit="step", initial=done, total=steps)
    for step in progress:
        if decay_from is not None:
            fraction = (step - decay_from) / max(steps - decay_from, 1)
            for group in optimiser.param_groups:
                group["lr"] = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * fraction))
        crops = [
            foreground_crop(rng, volumes[int(rng.integers(len(volumes)))], patch)
            for _ in range(batch)
        ]
        if augmented is not None:
            crops = [augmented(rng, crop) for crop in crops]
        x = torch.from_numpy(np.stack([c[0] for c in crops])[:, None].copy())
        y = torch.from_numpy(np.stack([c[1] for c in crops]).copy())
        logits = model(x)
        loss = cross_entropy(logits, y) + dice_loss(logits, y, classes)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "step": step + 1}, checkpoint)
    model.eval()
