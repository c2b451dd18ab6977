"""Abdominal CT phantom: organs, vessels, vertebrae and liver lesions in Hounsfield units.

Anatomy is built from smoothly deformed ellipsoids and tubes in patient coordinates (LPS, mm),
so any grid (spacing, matrix, extent) samples the same body. Image formation follows the
calibration table in MODELS.md: tissue HU by contrast phase, a point-spread blur of about 0.6
voxel (which also gives partial volume at edges) and spatially correlated noise of 5 to 20 HU.

`varied=True` (what the reference models train on) randomises what real studies vary (domain
randomisation): body habitus and where the organs sit, stronger shape deformation, a missing
spleen or kidney, bowel loops with fluid and gas (some against the liver), lung bases at the
top, an arterial phase and enhancement that differs between patients, arms in the field of
view, metal with streaks; and the acquisition: blur along z as thick slices give it and in
plane, a sharp or smooth kernel, noise of 5 to 30 HU with its own grain.
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
    ARTERIAL = "arterial"  # late arterial: bright aorta and kidney cortex, liver barely enhanced
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
    Phase.ARTERIAL: {
        "air": -1000, "fat": -90, "muscle": 55, "liver": 78, "spleen": 105, "kidney": 190,
        "blood": 300, "bone": 900, "cortex": 1300,
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
        fields.append(cubic_zoom(coarse, grid.shape) * amplitude_mm)
    return tuple(fields)


def cubic_zoom(coarse: NDArray[np.float32], shape: tuple[int, ...]) -> NDArray[np.float32]:
    """`coarse` zoomed to `shape` by cubic splines, as `ndimage.zoom(order=3, mode="nearest")`
    zooms it, but one axis at a time: spline and boundary rule are separable, so the answer
    is the same, and a 4x5x5 field zoomed straight onto a whole CT costs seconds per field."""
    zoomed = coarse.astype(np.float64)
    for axis, size in enumerate(shape):
        count = zoomed.shape[axis]
        weights = np.stack(  # column i: how input sample i spreads over the output
            [
                ndimage.zoom(unit, size / count, order=3, mode="nearest")[:size]
                for unit in np.eye(count)
            ],
            axis=1,
        )
        zoomed = np.moveaxis(np.moveaxis(zoomed, axis, -1) @ weights.T, -1, axis)
    return zoomed.astype(np.float32)


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


_ENHANCING = ("liver", "spleen", "kidney", "blood")


class _Variation:
    """Draws for `varied` phantoms, from their own stream; without one, the plain phantom's
    values (no change)."""

    def __init__(self, rng: np.random.Generator | None) -> None:
        self.rng = rng

    def uniform(self, low: float, high: float) -> float:
        if self.rng is None:
            return 0.0 if low < 0 < high else 1.0
        return float(self.rng.uniform(low, high))

    def chance(self, probability: float) -> bool:
        return self.rng is not None and bool(self.rng.random() < probability)


class _Looks:
    """How the liver, its lesions and the noise look in a varied phantom, from a stream of
    their own (none: the plain phantom's spheres of one density in an even liver): parenchyma
    uneven by perfusion, lobulated lesions, metastases of 20 to 80 HU contrast and some with an
    enhancing rim, and the blotchy noise of iterative reconstruction."""

    def __init__(self, rng: np.random.Generator | None) -> None:
        self.rng = rng

    def parenchyma(self, grid: Grid, hu: NDArray[np.float32], liver: NDArray[np.bool_]) -> None:
        """Smooth patches of perfusion, 10 to 25 mm across and up to 12 HU either way."""
        if self.rng is None:
            return
        width = [float(self.rng.uniform(10, 25)) / s for s in grid.spacing]
        field = ndimage.gaussian_filter(self.rng.normal(size=grid.shape).astype(np.float32), width)
        field *= float(self.rng.uniform(0, 12)) / max(float(field.std()), 1e-6)
        hu[liver] += field[liver]

    def shape(
        self,
        coordinates: tuple[NDArray[np.float32], ...],
        centre: tuple[float, float, float],
        diameter: float,
    ) -> NDArray[np.bool_]:
        """A sphere, or in a varied phantom now and then a lobulated one (lobes beside it)."""
        x, y, z = coordinates
        mask = _ellipsoid(x, y, z, centre, (diameter / 2,) * 3)
        if self.rng is None or self.rng.random() < 0.5:
            return mask
        for _ in range(int(self.rng.integers(1, 3))):
            offset = self.rng.normal(size=3)
            offset *= diameter * 0.35 / max(float(np.linalg.norm(offset)), 1e-6)
            lobe = tuple(c + o for c, o in zip(centre, offset, strict=True))
            mask |= _ellipsoid(x, y, z, lobe, (diameter * self.rng.uniform(0.2, 0.35),) * 3)
        return mask

    def metastasis(
        self, grid: Grid, hu: NDArray[np.float32], mask: NDArray[np.bool_], liver_hu: float
    ) -> None:
        """A varied metastasis: its contrast redrawn from 20 to 80 HU, and one in two with
        a rim 1.5 to 3.5 mm thick enhancing up to 25 HU above the liver."""
        if self.rng is None:
            return
        hu[mask] = liver_hu - float(self.rng.uniform(20, 80))
        if self.rng.random() < 1 / 2:
            (tight,) = ndimage.find_objects(mask.astype(np.uint8))
            box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in tight)
            depth = ndimage.distance_transform_edt(mask[box], sampling=grid.spacing)
            rim = mask[box] & (depth <= float(self.rng.uniform(1.5, 3.5)))
            hu[box][rim] = liver_hu + float(self.rng.uniform(0, 25))

    def blotches(self, noise: NDArray[np.float32]) -> NDArray[np.float32]:
        """Noise, in two varied phantoms in five with a coarse part mixed in: iterative
        reconstruction leaves blotches several millimetres across."""
        if self.rng is None or self.rng.random() >= 0.4:
            return noise
        coarse = ndimage.gaussian_filter(
            self.rng.normal(size=noise.shape).astype(np.float32), float(self.rng.uniform(2.5, 6))
        )
        share = float(self.rng.uniform(0.3, 0.8))
        unit = noise / max(float(noise.std()), 1e-6)
        mixed = (1 - share) * unit + share * coarse / max(float(coarse.std()), 1e-6)
        return np.asarray(mixed, dtype=np.float32)


def _surroundings(
    rng: np.random.Generator,
    grid: Grid,
    coordinates: tuple[NDArray[np.float32], ...],
    hu: NDArray[np.float32],
    organs: NDArray[np.uint8],
    cavity: NDArray[np.bool_],
    body: tuple[float, float],
) -> None:
    """What lies around the labelled organs in a varied phantom, painted in place: bowel
    loops with fluid and gas, lung bases at the top, arms beside the body, metal."""
    x, y, z = coordinates
    free = cavity & (organs == 0)
    z_top = float(z.max())
    for index in range(int(rng.integers(3, 9))):
        near_liver = index < 2  # the first loops lie against the liver, where gas misleads
        centre = (
            float(rng.uniform(-45, -5) if near_liver else rng.uniform(-70, 70)),
            float(rng.uniform(-60, 10)),
            float(
                rng.uniform(z_top - 160, z_top - 60) if near_liver else rng.uniform(-z_top, z_top)
            ),
        )
        radii = (float(rng.uniform(12, 25)), float(rng.uniform(10, 20)), float(rng.uniform(15, 40)))
        loop = _ellipsoid(x, y, z, centre, radii) & free
        hu[loop] = float(rng.uniform(10, 40))
        gas = loop & (y < centre[1] - float(rng.uniform(-radii[1] * 0.3, radii[1] * 0.5)))
        hu[gas] = -1000.0
    if rng.random() < 0.6:  # lung bases behind the liver and spleen dome
        base = z_top - float(rng.uniform(0, 40))
        for side in (-1.0, 1.0):
            lung = _ellipsoid(x, y, z, (side * 70.0, 30.0, base + 60.0), (60.0, 70.0, 80.0))
            hu[lung & free] = float(rng.uniform(-900, -820))
    if rng.random() < 0.3:  # arms beside the body, raised or not
        for side in (-1.0, 1.0):
            centre_x = side * (body[0] + float(rng.uniform(25, 60)))
            arm = _extrude(((x - centre_x) / 45) ** 2 + (y / 50) ** 2 <= 1.0, grid)
            bone = _extrude(((x - centre_x) / 12) ** 2 + (y / 12) ** 2 <= 1.0, grid)
            hu[arm & (hu < -500)] = 50.0
            hu[bone] = 800.0
    if rng.random() < 0.12:  # metal (a clip or a screw) with streaks across its plane
        k = int(rng.integers(0, grid.shape[0]))
        j, i = (
            int(rng.integers(grid.shape[1] // 4, 3 * grid.shape[1] // 4)),
            int(rng.integers(grid.shape[2] // 4, 3 * grid.shape[2] // 4)),
        )
        rows, columns = np.mgrid[0 : grid.shape[1], 0 : grid.shape[2]]
        angle = np.arctan2(rows - j, columns - i)
        distance = np.hypot(rows - j, columns - i) + 1
        streaks = 300 * np.cos(8 * angle + float(rng.uniform(0, np.pi))) / np.sqrt(distance)
        for dk in range(-2, 3):
            if 0 <= k + dk < grid.shape[0]:
                hu[k + dk] += streaks.astype(np.float32) * (1 - abs(dk) / 3)
        hu[max(k - 1, 0) : k + 2, j - 2 : j + 3, i - 2 : i + 3] = 3000.0


def _acquisition(
    rng: np.random.Generator, hu: NDArray[np.float32], noise_hu: float | None
) -> tuple[NDArray[np.float32], NDArray[np.float32], float]:
    """A varied acquisition: blur along z (thick slices) and in plane, a sharp or smooth
    kernel, and noise of 5 to 30 HU with a grain of its own. Returns the image, the unscaled
    noise and its standard deviation."""
    hu = ndimage.gaussian_filter(
        hu, (float(rng.uniform(0.2, 1.6)), *(float(rng.uniform(0, 0.6)),) * 2)
    )
    if rng.random() < 0.3:  # a sharp kernel: edges enhanced, noise finer and stronger
        hu = hu + float(rng.uniform(0.3, 0.8)) * (hu - ndimage.gaussian_filter(hu, 1.0))
    grain = float(rng.uniform(0.5, 1.8))
    noise = ndimage.gaussian_filter(rng.normal(0, 1, size=hu.shape).astype(np.float32), grain)
    return hu, noise, float(rng.uniform(5, 30)) if noise_hu is None else noise_hu


def generate_ct(
    seed: int,
    grid: Grid,
    phase: Phase | None = None,
    lesion_count: int | None = None,
    noise_hu: float | None = None,
    varied: bool = False,
) -> CTPhantom:
    """One abdominal CT phantom; every random choice comes from `seed` (and, when `varied`,
    from a second stream of it, so the plain phantoms stay as they were)."""
    rng = np.random.default_rng(seed)
    vary = _Variation(np.random.default_rng([seed, 17]) if varied else None)
    phase = phase or (Phase.PORTAL_VENOUS if rng.random() < 0.7 else Phase.UNENHANCED)
    if vary.rng is not None and phase is Phase.PORTAL_VENOUS and vary.rng.random() < 0.2:
        phase = Phase.ARTERIAL
    hu_table = {
        tissue: value * (vary.uniform(0.85, 1.15) if tissue in _ENHANCING else 1.0)
        for tissue, value in _HU[phase].items()
    }
    x0, y0, z0 = grid.coordinates()
    x0, y0 = x0 - vary.uniform(-15, 15), y0 - vary.uniform(-15, 15)  # off the centre of the field
    dx, dy, dz = _deformation(rng, grid, amplitude_mm=4.0 * vary.uniform(0.8, 2.2))
    x, y, z = x0 + dx, y0 + dy, z0 + dz

    organs = np.zeros(grid.shape, dtype=np.uint8)
    hu = np.full(grid.shape, hu_table["air"], dtype=np.float32)

    # Body: fat-wrapped muscle wall around an abdominal cavity (LPS: +y is posterior).
    half_width, half_depth = rng.uniform(150, 175), rng.uniform(105, 125)
    half_width *= vary.uniform(0.85, 1.12)
    half_depth *= vary.uniform(0.85, 1.15)
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
    liver_center = (
        -55.0 + vary.uniform(-12, 12),
        -5.0 + vary.uniform(-12, 12),
        z_top - liver_r[2] * 0.9 + vary.uniform(-25, 15),
    )
    liver = _ellipsoid(x, y, z, liver_center, liver_r) & (x - 0.35 * (z - liver_center[2]) < 25)
    place(Organ.LIVER, liver & (organs == 0), "liver")

    # Spleen: patient left (+x), posterior.
    spleen_ml = float(np.clip(rng.normal(195, 78), 90, 400))
    spleen_r = _radii_for_volume((0.7, 1.0, 1.3), spleen_ml)
    spleen_center = (
        half_width - 55.0 + vary.uniform(-12, 8),
        spine_y - 25.0 + vary.uniform(-15, 10),
        z_top - 60.0 + vary.uniform(-30, 20),
    )
    if not vary.chance(0.08):  # a splenectomy
        place(Organ.SPLEEN, _ellipsoid(x, y, z, spleen_center, spleen_r) & (organs == 0), "spleen")

    # Kidneys: beside the spine, about 110 mm long.
    for organ, side in ((Organ.KIDNEY_LEFT, 1.0), (Organ.KIDNEY_RIGHT, -1.0)):
        length = float(np.clip(rng.normal(110, 10), 85, 135))
        center = (
            side * 62.0 + vary.uniform(-10, 10),
            spine_y - 5.0 + vary.uniform(-8, 8),
            z_top - 120.0 - (10.0 if side < 0 else 0.0) + vary.uniform(-25, 25),
        )
        kidney = _ellipsoid(x, y, z, center, (26.0, 22.0, length / 2))
        if not vary.chance(0.15):  # a nephrectomy (often, so that the empty fossa is learned)
            place(organ, kidney & (organs == 0), "kidney")

    # Liver lesions: metastases and cysts inside the liver. Varied phantoms draw how they look
    # from a third stream, so that the anatomy of both kinds stays as it was.
    looks = _Looks(np.random.default_rng([seed, 23]) if varied else None)
    looks.parenchyma(grid, hu, organs == Organ.LIVER)
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
        shape = looks.shape((x0, y0, z0), center, diameter)
        mask = shape & (organs == Organ.LIVER)
        if not mask.any():
            continue
        lesions[mask] = label
        contrast = rng.uniform(30, 70)
        hu[mask] = rng.uniform(0, 15) if kind is LesionKind.CYST else hu_table["liver"] - contrast
        if kind is LesionKind.METASTASIS:
            looks.metastasis(grid, hu, mask, hu_table["liver"])
        lesion_list.append(Lesion(kind, center, diameter, label))

    if vary.rng is not None:
        _surroundings(vary.rng, grid, (x0, y0, z0), hu, organs, cavity, (half_width, half_depth))

    # Image formation: texture, point-spread blur, correlated noise.
    hu += rng.normal(0, 4, size=grid.shape).astype(np.float32) * (organs > 0)
    sigma_psf = 0.6
    hu = ndimage.gaussian_filter(hu, sigma=sigma_psf)
    noise_sigma = float(rng.uniform(5, 20)) if noise_hu is None else noise_hu
    noise = ndimage.gaussian_filter(rng.normal(0, 1, size=grid.shape).astype(np.float32), 1.0)
    if vary.rng is not None:
        hu, noise, noise_sigma = _acquisition(vary.rng, hu, noise_hu)
        noise = looks.blotches(noise)
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
