"""Ultrasound cine phantom: B-mode frames from a curvilinear probe, with a target structure.

Image formation follows MODELS.md: a complex Gaussian scatterer field filtered by the
point-spread function gives fully developed speckle (Rayleigh envelope, SNR 1.91); attenuation
of about 0.5 dB/cm/MHz is partly undone by time-gain compensation; log compression maps 45 to
70 dB of dynamic range to 8 bits; scan conversion draws the sector of a curvilinear probe. The
target, a hypoechoic rounded structure with posterior enhancement (a cyst-like structure),
drifts with the cine and is absent from some frames.

Everything a scanner and a body vary is drawn from the seed (domain randomisation): the
probe's sector, curvature and depth; frequency, gain, time-gain compensation and its errors,
dynamic range and the speckle's grain; the target's size, shape, depth, echoes inside it and
how much it enhances behind; and structures that are dark but not the target: vessels
(anechoic tubes with bright walls and no enhancement behind), a heart chamber's edge, and
acoustic shadows behind reflectors such as ribs and calcifications, bright or barely seen.
"""

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

ATTENUATION_DB_PER_CM_MHZ = 0.5
DEPTH_SAMPLES, ANGLE_SAMPLES = 512, 192


@dataclass(frozen=True)
class UltrasoundCine:
    frames: NDArray[np.uint8]  # (frames, rows, columns), B-mode after scan conversion
    masks: NDArray[np.bool_]  # the target structure in each frame
    present: NDArray[np.bool_]  # (frames,), whether the target is in the frame
    pixel_spacing_mm: float


@dataclass(frozen=True)
class Probe:
    """A curvilinear probe's sector: its opening, the radius of its face, its depth."""

    sector_degrees: float
    apex_cm: float
    depth_cm: float

    def extent_cm(self) -> float:
        """Width of the square image that holds the sector."""
        half = np.deg2rad(self.sector_degrees / 2)
        outer = self.depth_cm + self.apex_cm
        return float(max(2 * outer * np.sin(half), outer - self.apex_cm * np.cos(half)))


def _probe(rng: np.random.Generator) -> Probe:
    """A curvilinear probe: its opening, face and depth."""
    return Probe(
        float(rng.uniform(50, 90)), float(rng.uniform(1.5, 6.0)), float(rng.uniform(9, 20))
    )


def rayleigh_envelope(
    rng: np.random.Generator, shape: tuple[int, int], psf_sigma: tuple[float, float]
) -> NDArray[np.float32]:
    """Envelope of PSF-filtered complex Gaussian scatterers: fully developed speckle."""
    real = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), psf_sigma)
    imag = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), psf_sigma)
    envelope: NDArray[np.float32] = np.hypot(real, imag).astype(np.float32)
    return envelope / np.float32(envelope.mean())


def _scan_convert(
    polar: NDArray[np.float32], size: int, probe: Probe
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Map (depth, angle) samples to a square image, with the mask of the sector."""
    depth_samples, angle_samples = polar.shape
    half = np.deg2rad(probe.sector_degrees / 2)
    extent = probe.extent_cm()
    top = probe.apex_cm * np.cos(half)
    xs = np.linspace(-extent / 2, extent / 2, size, dtype=np.float32)
    ys = np.linspace(top, top + extent, size, dtype=np.float32)
    x, y = np.meshgrid(xs, ys)
    radius = np.hypot(x, y) - probe.apex_cm
    angle = np.arctan2(x, y)
    inside = (radius >= 0) & (radius <= probe.depth_cm) & (np.abs(angle) <= half)
    rows = radius / probe.depth_cm * (depth_samples - 1)
    columns = (angle + half) / (2 * half) * (angle_samples - 1)
    image = ndimage.map_coordinates(polar, [rows, columns], order=1, mode="constant")
    return np.where(inside, image, 0.0).astype(np.float32), np.asarray(inside, dtype=bool)


def _present_frames(
    rng: np.random.Generator, frames: int, fraction: float | None
) -> NDArray[np.bool_]:
    """A contiguous run of frames holding the target; a random share when `fraction` is None
    (one cine in seven has none at all)."""
    if fraction is None:
        fraction = 0.0 if rng.random() < 1 / 7 else float(rng.uniform(0.3, 1.0))
    present = np.zeros(frames, dtype=bool)
    run = round(frames * fraction)
    if run:
        first = int(rng.integers(0, frames - run + 1))
        present[first : first + run] = True
    return present


def generate_cine(
    seed: int,
    frames: int = 30,
    size: int = 256,
    present_fraction: float | None = 0.6,
) -> UltrasoundCine:
    """A cine of `frames` B-mode frames; the target appears in a contiguous run of them
    (`present_fraction` of them, or a random share when None)."""
    rng = np.random.default_rng(seed)
    probe = _probe(rng)
    present = _present_frames(rng, frames, present_fraction)
    frequency_mhz = float(rng.uniform(2.5, 5.0))
    dynamic_range_db = float(rng.uniform(45, 70))
    gain_db = float(rng.uniform(-6, 6))
    psf = (float(rng.uniform(1.0, 2.2)), float(rng.uniform(0.5, 1.2)))

    depth_cm = np.linspace(0, probe.depth_cm, DEPTH_SAMPLES, dtype=np.float32)[:, None]
    half = np.deg2rad(probe.sector_degrees / 2)
    angles = np.linspace(-half, half, ANGLE_SAMPLES, dtype=np.float32)[None, :]
    lateral_cm = angles * (probe.apex_cm + depth_cm)  # arc length across the beam
    loss_db = 2 * ATTENUATION_DB_PER_CM_MHZ * frequency_mhz * depth_cm  # round trip
    tgc_error = ndimage.gaussian_filter1d(rng.normal(0, 3, DEPTH_SAMPLES), 40)[:, None]
    tgc_db = loss_db * float(rng.uniform(0.75, 1.05)) + tgc_error.astype(np.float32)

    background = ndimage.gaussian_filter(
        rng.normal(0, 0.3, size=(DEPTH_SAMPLES, ANGLE_SAMPLES)).astype(np.float32), 20
    )
    echogenicity_base = np.exp(background)
    darker, shadow = _distractors(rng, probe, depth_cm, angles, lateral_cm)
    echogenicity_base = echogenicity_base * darker * shadow

    # The target: a rounded structure, its outline perturbed, inside the sector.
    radius_depth = float(rng.uniform(0.6, 2.4))
    radius_lateral = float(rng.uniform(0.7, 2.8))
    centre_depth = float(rng.uniform(0.2, 0.75)) * probe.depth_cm + radius_depth
    centre_depth = min(centre_depth, probe.depth_cm - radius_depth - 0.5)
    room = half * 0.75 - radius_lateral / (probe.apex_cm + centre_depth)
    centre_angle = float(rng.uniform(-1, 1)) * max(room, 0.0)
    harmonics = rng.normal(0, 0.06, size=(3, 2))
    inside_echoes = float(rng.uniform(0.02, 0.15))
    enhancement = float(rng.uniform(1.2, 2.0))

    images, masks = [], []
    for index in range(frames):
        drift = 0.15 * np.sin(2 * np.pi * index / max(frames, 1))
        echogenicity = echogenicity_base
        target = np.zeros((DEPTH_SAMPLES, ANGLE_SAMPLES), dtype=bool)
        if present[index]:
            d = (depth_cm - centre_depth - drift) / radius_depth
            a = (lateral_cm - centre_angle * (probe.apex_cm + depth_cm)) / radius_lateral
            theta = np.arctan2(d, a)
            wobble = 1 + sum(
                c * np.cos((k + 2) * theta) + s * np.sin((k + 2) * theta)
                for k, (c, s) in enumerate(harmonics)
            )
            target = np.hypot(d, a) <= wobble
            columns = target.any(axis=0)
            behind = (depth_cm > centre_depth + drift) & columns[None, :] & ~target
            echogenicity = np.where(behind, echogenicity * enhancement, echogenicity)
            echogenicity = np.where(target, echogenicity * inside_echoes, echogenicity)
        speckle = rayleigh_envelope(rng, (DEPTH_SAMPLES, ANGLE_SAMPLES), psf)
        amplitude = echogenicity * speckle * 10 ** ((tgc_db - loss_db + gain_db) / 20)
        decibels = 20 * np.log10(np.maximum(amplitude, 1e-6))
        gray = np.clip((decibels + dynamic_range_db / 2) / dynamic_range_db, 0, 1) * 255
        image, inside = _scan_convert(gray.astype(np.float32), size, probe)
        mask_image, _ = _scan_convert(target.astype(np.float32), size, probe)
        images.append(np.rint(image).astype(np.uint8))
        masks.append((mask_image > 0.5) & inside)
    return UltrasoundCine(
        frames=np.stack(images),
        masks=np.stack(masks),
        present=present & np.stack(masks).any(axis=(1, 2)),
        pixel_spacing_mm=float(probe.extent_cm() * 10 / size),
    )


def _distractors(
    rng: np.random.Generator,
    probe: Probe,
    depth_cm: NDArray[np.float32],
    angles: NDArray[np.float32],
    lateral_cm: NDArray[np.float32],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Dark structures that are not the target, as echogenicity factors over the polar grid:
    vessels and a heart chamber's edge (`darker`), shadows behind reflectors (`shadow`)."""
    darker = np.ones((DEPTH_SAMPLES, ANGLE_SAMPLES), dtype=np.float32)
    for _ in range(int(rng.integers(0, 3))):  # vessels: long tubes across the beam
        slope = float(rng.uniform(-0.6, 0.6))
        offset = float(rng.uniform(0.2, 0.9)) * probe.depth_cm
        width = float(rng.uniform(0.25, 0.8))
        distance = np.abs(depth_cm - offset - slope * lateral_cm) / np.sqrt(1 + slope**2)
        lumen = distance <= width
        wall = (distance > width) & (distance <= width + 0.12)
        darker = np.where(lumen, darker * 0.05, np.where(wall, darker * 2.5, darker))
    if rng.random() < 0.2:  # a heart chamber's edge at the deep end: large, anechoic, walled
        centre = probe.depth_cm * float(rng.uniform(0.9, 1.2))
        radius = probe.depth_cm * float(rng.uniform(0.2, 0.4))
        across = float(lateral_cm.max()) * float(rng.uniform(-0.5, 0.5))
        distance = np.hypot(depth_cm - centre, lateral_cm - across)
        darker = np.where(distance <= radius, darker * 0.04, darker)
        darker = np.where((distance > radius) & (distance <= radius + 0.4), darker * 2.0, darker)
    shadow = np.ones_like(darker)
    for _ in range(int(rng.integers(0, 3))):  # reflectors with acoustic shadows behind
        at_depth = float(rng.uniform(0.05, 0.6)) * probe.depth_cm
        at_angle = float(rng.uniform(angles.min(), angles.max()))
        half_width = float(rng.uniform(0.02, 0.08))
        across = np.abs(angles - at_angle) <= half_width
        spot = across & (np.abs(depth_cm - at_depth) <= 0.15)
        shadow = np.where(spot, shadow * float(rng.uniform(1.0, 6.0)), shadow)  # seen, or not
        shadow = np.where(across & (depth_cm > at_depth + 0.15), shadow * 0.15, shadow)
    return darker, shadow
