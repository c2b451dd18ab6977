"""An independent ultrasound cine generator, for judging the reference cyst model on data it
never saw. It lives in tests/ only: nothing in appliance/ imports it, and no training reads it.

Written apart from `appliance.phantoms.ultrasound`, on purpose differently: the image is made
directly on the display grid (no polar scan conversion), in frames of another size (300 x 400);
speckle is Nakagami (gamma-distributed intensity of varying shape) smoothed by an elliptical
kernel, not a filtered complex Gaussian field; grey levels come from a power law, not log
compression; the depth ramp is linear; the cyst is a lobulated union of two or three ellipses
that breathes in size across the cine; dark things that are not a cyst are straight vessels and
rib shadows; and a share of the frames hold no cyst at all.
"""

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

ROWS, COLUMNS = 300, 400
PIXEL_MM = 0.5


@dataclass(frozen=True)
class Cine:
    frames: NDArray[np.uint8]  # (frames, ROWS, COLUMNS)
    masks: NDArray[np.bool_]


def _field_of_view(rng: np.random.Generator) -> NDArray[np.bool_]:
    """A convex probe's fan or a linear probe's rectangle, on the display grid."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    if rng.random() < 0.35:
        margin = int(rng.integers(20, 70))
        return (x >= margin) & (x < COLUMNS - margin) & (y >= 8)
    apex_y = float(rng.uniform(-120, -40))
    opening = np.deg2rad(rng.uniform(30, 42))
    radius = np.hypot(x - COLUMNS / 2, y - apex_y)
    angle = np.arctan2(x - COLUMNS / 2, y - apex_y)
    return (np.abs(angle) <= opening) & (radius >= -apex_y + 10) & (radius <= ROWS - apex_y)


def _lobulated(
    rng: np.random.Generator,
) -> list[tuple[float, float, float, float, float]]:
    """Two or three overlapping ellipses: (row, column, half-height, half-width, tilt)."""
    row, column = float(rng.uniform(90, 220)), float(rng.uniform(130, 270))
    lobes = []
    for _ in range(int(rng.integers(2, 4))):
        lobes.append(
            (
                row + float(rng.normal(0, 8)),
                column + float(rng.normal(0, 10)),
                float(rng.uniform(12, 34)),
                float(rng.uniform(14, 40)),
                float(rng.uniform(0, np.pi)),
            )
        )
    return lobes


def _inside(
    lobes: list[tuple[float, float, float, float, float]], scale: float, shift: float
) -> NDArray[np.bool_]:
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    mask = np.zeros((ROWS, COLUMNS), dtype=bool)
    for row, column, half_height, half_width, tilt in lobes:
        dy, dx = y - row - shift, x - column
        u = dx * np.cos(tilt) + dy * np.sin(tilt)
        v = -dx * np.sin(tilt) + dy * np.cos(tilt)
        mask |= (u / (half_width * scale)) ** 2 + (v / (half_height * scale)) ** 2 <= 1
    return mask


def _distractors(rng: np.random.Generator) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Straight anechoic vessels and vertical rib shadows, as factors on tissue brightness."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    vessels = np.ones((ROWS, COLUMNS), dtype=np.float32)
    for _ in range(int(rng.integers(0, 3))):
        angle = float(rng.uniform(-0.5, 0.5))
        offset = float(rng.uniform(60, 260))
        half = float(rng.uniform(4, 14))
        distance = np.abs((y - offset) * np.cos(angle) - (x - COLUMNS / 2) * np.sin(angle))
        vessels = np.where(distance <= half, 0.06, vessels)
        vessels = np.where((distance > half) & (distance <= half + 2.5), 1.8, vessels)
    shadows = np.ones_like(vessels)
    for _ in range(int(rng.integers(0, 2))):
        column, half = float(rng.uniform(60, 340)), float(rng.uniform(6, 18))
        top = float(rng.uniform(10, 80))
        shadows = np.where((np.abs(x - column) <= half) & (y > top), 0.2, shadows)
    return vessels, shadows


def unseen_cine(seed: int, frames: int = 10) -> Cine:
    """A cine whose cyst is in some frames (none, in about one cine in five)."""
    rng = np.random.default_rng(seed)
    view = _field_of_view(rng)
    vessels, shadows = _distractors(rng)
    lobes = _lobulated(rng)
    with_cyst = np.zeros(frames, dtype=bool)
    if rng.random() >= 0.2:
        first = int(rng.integers(0, frames // 2))
        with_cyst[first : first + int(rng.integers(frames // 3, frames + 1))] = True
    depth = np.linspace(0, 1, ROWS, dtype=np.float32)[:, None]
    ramp = 1 + float(rng.uniform(-0.5, 0.3)) * depth  # a depth gain that is never quite right
    tissue = ndimage.gaussian_filter(rng.normal(0, 0.15, (ROWS, COLUMNS)), 30) + 1
    shape = float(rng.uniform(0.7, 1.5))  # Nakagami m: pre-Rayleigh to post-Rayleigh
    grain = (float(rng.uniform(1.0, 2.0)), float(rng.uniform(1.5, 3.5)))
    exponent = float(rng.uniform(0.35, 0.6))
    brightness = float(rng.uniform(110, 170))
    images, masks = [], []
    for index in range(frames):
        phase = 2 * np.pi * index / frames
        mask = np.zeros((ROWS, COLUMNS), dtype=bool)
        echo = tissue * vessels * shadows * ramp
        if with_cyst[index]:
            mask = _inside(lobes, 1 + 0.06 * np.sin(phase), 4 * np.cos(phase)) & view
            below = ndimage.binary_dilation(mask, structure=np.ones((1, 9)), iterations=1)
            below = np.maximum.accumulate(below, axis=0) & ~mask
            echo = np.where(below, echo * 1.5, echo)
            echo = np.where(mask, echo * 0.04, echo)
        speckle = rng.gamma(shape, 1 / shape, (ROWS, COLUMNS))
        speckle = ndimage.gaussian_filter(speckle, grain)
        intensity = np.clip(echo * speckle / speckle.mean(), 0, None) ** exponent * brightness
        image = np.where(view, np.clip(intensity, 0, 255), 0)
        images.append(np.rint(image).astype(np.uint8))
        masks.append(mask)
    return Cine(np.stack(images), np.stack(masks))
