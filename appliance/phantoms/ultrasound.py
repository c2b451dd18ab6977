"""Ultrasound cine phantom: B-mode frames from a curvilinear probe, with a target structure.

Image formation follows MODELS.md: a complex Gaussian scatterer field filtered by the
point-spread function gives fully developed speckle (Rayleigh envelope, SNR 1.91); attenuation
of about 0.5 dB/cm/MHz is partly undone by time-gain compensation; log compression maps 50 to
65 dB of dynamic range to 8 bits; scan conversion draws the sector of a curvilinear probe. The
target, a hypoechoic ellipse with posterior enhancement (a cyst-like structure), drifts with
the cine and is absent from some frames.
"""

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

SOUND_FREQUENCY_MHZ = 3.5
ATTENUATION_DB_PER_CM_MHZ = 0.5
DEPTH_CM = 16.0
SECTOR_DEGREES = 70.0
APEX_CM = 4.0  # radius of curvature of the probe face


@dataclass(frozen=True)
class UltrasoundCine:
    frames: NDArray[np.uint8]  # (frames, rows, columns), B-mode after scan conversion
    masks: NDArray[np.bool_]  # the target structure in each frame
    present: NDArray[np.bool_]  # (frames,), whether the target is in the frame
    pixel_spacing_mm: float


def rayleigh_envelope(
    rng: np.random.Generator, shape: tuple[int, int], psf_sigma: tuple[float, float]
) -> NDArray[np.float32]:
    """Envelope of PSF-filtered complex Gaussian scatterers: fully developed speckle."""
    real = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), psf_sigma)
    imag = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), psf_sigma)
    envelope: NDArray[np.float32] = np.hypot(real, imag).astype(np.float32)
    return envelope / np.float32(envelope.mean())


def _scan_convert(
    polar: NDArray[np.float32], size: int
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Map (depth, angle) samples to a square image, with the mask of the sector."""
    depth_samples, angle_samples = polar.shape
    half = np.deg2rad(SECTOR_DEGREES / 2)
    extent = DEPTH_CM + APEX_CM
    xs = np.linspace(-extent * np.sin(half), extent * np.sin(half), size, dtype=np.float32)
    ys = np.linspace(APEX_CM * np.cos(half), extent, size, dtype=np.float32)
    x, y = np.meshgrid(xs, ys)
    radius = np.hypot(x, y) - APEX_CM
    angle = np.arctan2(x, y)
    inside = (radius >= 0) & (radius <= DEPTH_CM) & (np.abs(angle) <= half)
    rows = radius / DEPTH_CM * (depth_samples - 1)
    columns = (angle + half) / (2 * half) * (angle_samples - 1)
    image = ndimage.map_coordinates(polar, [rows, columns], order=1, mode="constant")
    return np.where(inside, image, 0.0).astype(np.float32), np.asarray(inside, dtype=bool)


def generate_cine(
    seed: int,
    frames: int = 30,
    size: int = 256,
    present_fraction: float = 0.6,
) -> UltrasoundCine:
    """A cine of `frames` B-mode frames; the target appears in a contiguous run of them."""
    rng = np.random.default_rng(seed)
    depth_samples, angle_samples = 512, 192
    present = np.zeros(frames, dtype=bool)
    run = round(frames * present_fraction)
    if run:
        first = int(rng.integers(0, frames - run + 1))
        present[first : first + run] = True
    dynamic_range_db = float(rng.uniform(50, 65))
    target_depth = float(rng.uniform(5, 11))
    target_angle = float(rng.uniform(-0.25, 0.25))
    radii = (float(rng.uniform(1.0, 2.2)), float(rng.uniform(0.12, 0.25)))  # cm, radians
    background = ndimage.gaussian_filter(
        rng.normal(0, 0.25, size=(depth_samples, angle_samples)).astype(np.float32), 25
    )
    depth_cm = np.linspace(0, DEPTH_CM, depth_samples, dtype=np.float32)[:, None]
    angles = np.linspace(-0.5, 0.5, angle_samples, dtype=np.float32)[None, :] * np.deg2rad(
        SECTOR_DEGREES
    )
    loss_db = 2 * ATTENUATION_DB_PER_CM_MHZ * SOUND_FREQUENCY_MHZ * depth_cm  # round trip
    tgc_db = loss_db * float(rng.uniform(0.85, 1.0))  # imperfect time-gain compensation

    images, masks = [], []
    for index in range(frames):
        drift = 0.15 * np.sin(2 * np.pi * index / max(frames, 1))
        echogenicity = np.exp(background)
        target = np.zeros((depth_samples, angle_samples), dtype=bool)
        if present[index]:
            target = (
                ((depth_cm - target_depth - drift) / radii[0]) ** 2
                + ((angles - target_angle) / radii[1]) ** 2
            ) <= 1.0
            behind = (depth_cm > target_depth) & (np.abs(angles - target_angle) < radii[1] * 0.8)
            echogenicity = np.where(behind & ~target, echogenicity * 1.6, echogenicity)
            echogenicity = np.where(target, echogenicity * 0.08, echogenicity)
        speckle = rayleigh_envelope(rng, (depth_samples, angle_samples), (1.5, 0.8))
        amplitude = echogenicity * speckle * 10 ** ((tgc_db - loss_db) / 20)
        decibels = 20 * np.log10(np.maximum(amplitude, 1e-6))
        gray = np.clip((decibels + dynamic_range_db / 2) / dynamic_range_db, 0, 1) * 255
        image, inside = _scan_convert(gray.astype(np.float32), size)
        mask_image, _ = _scan_convert(target.astype(np.float32), size)
        images.append(np.rint(image).astype(np.uint8))
        masks.append((mask_image > 0.5) & inside)
    extent_mm = 2 * (DEPTH_CM + APEX_CM) * np.sin(np.deg2rad(SECTOR_DEGREES / 2)) * 10
    return UltrasoundCine(
        frames=np.stack(images),
        masks=np.stack(masks),
        present=present,
        pixel_spacing_mm=float(extent_mm / size),
    )
