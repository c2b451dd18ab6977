"""Abdominal CT phantom: organs, vessels, vertebrae and liver lesions in Hounsfield units.

Anatomy is built from smoothly deformed ellipsoids and tubes in patient coordinates (LPS, mm),
so any grid (spacing, matrix, extent) samples the same body. Image formation follows the
calibration table in MODELS.md: tissue HU by contrast phase, a point-spread blur of about 0.6
voxel (which also gives partial volume at edges) and spatially correlated noise of 5 to 20 HU.
"""

from dataclasses import dataclass
from enum import IntEnum, StrEnum

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage


class Organ(IntEnum):
    """Label values of the organ map (0 is background)."""

    LIVER = 1
    SPLEEN = 2
    KIDNEY_LEFT = 3
    KIDNEY_RIGHT = 4
    AORTA = 5
    IVC = 6
    VERTEBRAE = 7


class Phase(StrEnum):
    UNENHANCED = "unenhanced"
    PORTAL_VENOUS = "portal_venous"


class LesionKind(StrEnum):
    METASTASIS = "metastasis"  # hypovascular, 30 to 70 HU below enhanced liver
    CYST = "cyst"  # 0 to 15 HU


# Mean HU per tissue and phase (MODELS.md calibration table).
_HU: dict[Phase, dict[str, float]] = {
    Phase.UNENHANCED: {
        "air": -1000, "fat": -90, "muscle": 45, "liver": 58, "spleen": 48, "kidney": 30,
        "blood": 55, "bone": 900, "cortex": 1300,
    },
    Phase.PORTAL_VENOUS: {
        "air": -1000, "fat": -90, "muscle": 60, "liver": 112, "spleen": 118, "kidney": 170,
        "blood": 160, "bone": 900, "cortex": 1300,
    },
}  # fmt: skip


@dataclass(frozen=True)
class Lesion:
    kind: LesionKind
    center_mm: tuple[float, float, float]  # x, y, z in patient coordinates
    diameter_mm: float
    label: int  # value in the lesion map


@dataclass(frozen=True)
class Grid:
    """A CT grid: matrix (z, y, x) and spacing (z, y, x) in mm, centred on the body."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def coordinates(self) -> tuple[NDArray[np.float32], ...]:
        """Patient coordinates (x, y, z) in mm of every voxel centre, broadcastable."""
        axes = [
            (np.arange(n, dtype=np.float32) - (n - 1) / 2) * s
            for n, s in zip(self.shape, self.spacing, strict=True)
        ]
        z = axes[0][:, None, None]
        y = axes[1][None, :, None]
        x = axes[2][None, None, :]
        return x, y, z


@dataclass(frozen=True)
class CTPhantom:
    hu: NDArray[np.int16]  # (z, y, x)
    organs: NDArray[np.uint8]  # Organ labels
    lesions: NDArray[np.uint8]  # 0, or the Lesion.label of each lesion
    lesion_list: tuple[Lesion, ...]
    grid: Grid
    phase: Phase

    def organ_volume_ml(self, organ: Organ) -> float:
        voxel_ml = float(np.prod(self.grid.spacing)) / 1000.0
        return float(np.count_nonzero(self.organs == organ)) * voxel_ml


def _deformation(
    rng: np.random.Generator, grid: Grid, amplitude_mm: float
) -> tuple[NDArray[np.float32], ...]:
    """A smooth random displacement field, so no two organs are plain ellipsoids."""
    fields = []
    for _ in range(3):
        coarse = rng.normal(0.0, 1.0, size=(4, 5, 5)).astype(np.float32)
        zoom = [n / c for n, c in zip(grid.shape, coarse.shape, strict=True)]
        fine = ndimage.zoom(coarse, zoom, order=3, mode="nearest")[
            : grid.shape[0], : grid.shape[1], : grid.shape[2]
        ]
        fields.append(fine * amplitude_mm)
    return tuple(fields)


def _ellipsoid(
    x: NDArray[np.float32],
    y: NDArray[np.float32],
    z: NDArray[np.float32],
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> NDArray[np.bool_]:
    distance: NDArray[np.float32] = (
        ((x - center[0]) / radii[0]) ** 2
        + ((y - center[1]) / radii[1]) ** 2
        + ((z - center[2]) / radii[2]) ** 2
    )
    return distance <= 1.0


def _extrude(mask: NDArray[np.bool_], grid: Grid) -> NDArray[np.bool_]:
    """An in-plane mask repeated along z (or a full mask, unchanged)."""
    return np.asarray(np.broadcast_to(mask, grid.shape), dtype=bool)


def _radii_for_volume(
    shape: tuple[float, float, float], volume_ml: float
) -> tuple[float, float, float]:
    """Scale relative semi-axes so the ellipsoid holds `volume_ml`."""
    unit = 4.0 / 3.0 * np.pi * shape[0] * shape[1] * shape[2] / 1000.0
    scale = float((volume_ml / unit) ** (1.0 / 3.0))
    return (shape[0] * scale, shape[1] * scale, shape[2] * scale)


def generate_ct(
    seed: int,
    grid: Grid,
    phase: Phase | None = None,
    lesion_count: int | None = None,
    noise_hu: float | None = None,
) -> CTPhantom:
    """One abdominal CT phantom; every random choice comes from `seed`."""
    rng = np.random.default_rng(seed)
    phase = phase or (Phase.PORTAL_VENOUS if rng.random() < 0.7 else Phase.UNENHANCED)
    hu_table = _HU[phase]
    x0, y0, z0 = grid.coordinates()
    dx, dy, dz = _deformation(rng, grid, amplitude_mm=4.0)
    x, y, z = x0 + dx, y0 + dy, z0 + dz

    organs = np.zeros(grid.shape, dtype=np.uint8)
    hu = np.full(grid.shape, hu_table["air"], dtype=np.float32)

    # Body: fat-wrapped muscle wall around an abdominal cavity (LPS: +y is posterior).
    half_width, half_depth = rng.uniform(150, 175), rng.uniform(105, 125)
    body = _extrude((x0 / half_width) ** 2 + ((y0 - 5) / half_depth) ** 2 <= 1.0, grid)
    cavity = _extrude(
        (x0 / (half_width - 22)) ** 2 + ((y0 - 5) / (half_depth - 20)) ** 2 <= 1.0, grid
    )
    hu[body] = hu_table["fat"]
    hu[body & ~cavity] = hu_table["muscle"]
    hu[cavity] = hu_table["fat"] + 40  # mesenteric fat and bowel, averaged

    spine_y = half_depth - 45
    z_top = (grid.shape[0] - 1) / 2 * grid.spacing[0]

    def place(organ: Organ, mask: NDArray[np.bool_], tissue: str) -> None:
        mask = mask & cavity if organ not in (Organ.VERTEBRAE,) else mask
        organs[mask] = organ
        hu[mask] = hu_table[tissue]

    # Vertebral bodies with discs, and their cortical shell.
    spine = np.zeros(grid.shape, dtype=bool)
    level = z_top
    while level > -z_top - 30:
        height = rng.uniform(24, 28)
        radius = rng.uniform(18, 22)
        body_mask = ((x / radius) ** 2 + ((y - spine_y) / (radius * 0.8)) ** 2 <= 1.0) & (
            np.abs(z0 - (level - height / 2)) <= height / 2
        )
        spine |= body_mask
        level -= height + rng.uniform(7, 9)
    organs[spine] = Organ.VERTEBRAE
    hu[spine] = hu_table["bone"]
    shell = spine & ~ndimage.binary_erosion(spine, iterations=1)
    hu[shell] = hu_table["cortex"]

    # Great vessels: aorta left-anterior of the spine, IVC right-anterior and flatter.
    aorta_r = rng.uniform(10, 13)
    aorta = _extrude(((x - 18) / aorta_r) ** 2 + ((y - (spine_y - 32)) / aorta_r) ** 2 <= 1.0, grid)
    ivc = _extrude(((x + 24) / 13) ** 2 + ((y - (spine_y - 30)) / 8.5) ** 2 <= 1.0, grid)
    place(Organ.AORTA, aorta, "blood")
    place(Organ.IVC, ivc, "blood")

    # Liver: patient right (-x), upper abdomen, cut obliquely like a wedge.
    liver_ml = float(np.clip(rng.normal(1281, 219), 800, 1800))
    liver_r = _radii_for_volume((1.25, 1.0, 0.95), liver_ml * 1.35)
    liver_center = (-55.0, -5.0, z_top - liver_r[2] * 0.9)
    liver = _ellipsoid(x, y, z, liver_center, liver_r) & (x - 0.35 * (z - liver_center[2]) < 25)
    place(Organ.LIVER, liver & (organs == 0), "liver")

    # Spleen: patient left (+x), posterior.
    spleen_ml = float(np.clip(rng.normal(195, 78), 90, 400))
    spleen_r = _radii_for_volume((0.7, 1.0, 1.3), spleen_ml)
    spleen_center = (half_width - 55.0, spine_y - 25.0, z_top - 60.0)
    place(Organ.SPLEEN, _ellipsoid(x, y, z, spleen_center, spleen_r) & (organs == 0), "spleen")

    # Kidneys: beside the spine, about 110 mm long.
    for organ, side in ((Organ.KIDNEY_LEFT, 1.0), (Organ.KIDNEY_RIGHT, -1.0)):
        length = float(np.clip(rng.normal(110, 10), 85, 135))
        center = (side * 62.0, spine_y - 5.0, z_top - 120.0 - (10.0 if side < 0 else 0.0))
        kidney = _ellipsoid(x, y, z, center, (26.0, 22.0, length / 2))
        place(organ, kidney & (organs == 0), "kidney")

    # Liver lesions: metastases and cysts inside the liver.
    lesions = np.zeros(grid.shape, dtype=np.uint8)
    lesion_list: list[Lesion] = []
    count = int(rng.integers(0, 5)) if lesion_count is None else lesion_count
    liver_points = np.argwhere(organs == Organ.LIVER)
    for label in range(1, count + 1):
        if len(liver_points) == 0:
            break
        kind = LesionKind.CYST if rng.random() < 0.3 else LesionKind.METASTASIS
        diameter = float(rng.uniform(6, 30))
        index = liver_points[rng.integers(len(liver_points))]
        center = (float(x0[0, 0, index[2]]), float(y0[0, index[1], 0]), float(z0[index[0], 0, 0]))
        mask = _ellipsoid(x0, y0, z0, center, (diameter / 2,) * 3) & (organs == Organ.LIVER)
        if not mask.any():
            continue
        lesions[mask] = label
        contrast = rng.uniform(30, 70)
        hu[mask] = rng.uniform(0, 15) if kind is LesionKind.CYST else hu_table["liver"] - contrast
        lesion_list.append(Lesion(kind, center, diameter, label))

    # Image formation: texture, point-spread blur, correlated noise.
    hu += rng.normal(0, 4, size=grid.shape).astype(np.float32) * (organs > 0)
    sigma_psf = 0.6
    hu = ndimage.gaussian_filter(hu, sigma=sigma_psf)
    noise_sigma = float(rng.uniform(5, 20)) if noise_hu is None else noise_hu
    noise = ndimage.gaussian_filter(rng.normal(0, 1, size=grid.shape).astype(np.float32), 1.0)
    noise *= noise_sigma / max(float(noise.std()), 1e-6)
    hu += noise
    return CTPhantom(
        hu=np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        organs=organs,
        lesions=lesions,
        lesion_list=tuple(lesion_list),
        grid=grid,
        phase=phase,
    )
