"""An independent abdominal CT generator, for judging the reference CT models on data they
never saw. It lives in tests/ only: nothing in appliance/ imports it, and no training reads it.

Written apart from `appliance.phantoms.ct`, on purpose differently: organs are metaballs (sums
of Gaussian bumps, thresholded) rather than deformed ellipsoids, placed by their own rules;
tissue HU are drawn afresh inside the published ranges of MODELS.md for each study (not the
phantoms' fixed means); bowel loops with gas and fluid lie in the cavity next to the liver;
metastases are lobulated with an enhancing rim; the slice profile blurs more along z than in
plane; and the noise has a 1/f power spectrum shaped in Fourier space, stronger in the centre
of the body than at its edge, instead of a blurred white field.

Since it knows its own noise, it can say how visible each lesion is to an ideal observer
(`detectability`): the most any reader or model could see, where the lesion stands.
"""

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

LIVER, SPLEEN, KIDNEY_LEFT, KIDNEY_RIGHT, AORTA, IVC, VERTEBRAE = range(1, 8)
SLICE_PROFILE = (1.0, 0.5, 0.5)  # the Gaussian blur of the image, in voxels (z, y, x)
LOWEST_FREQUENCY = 0.02  # cycles per voxel, below which the noise's spectrum is flat


@dataclass(frozen=True)
class Study:
    hu: NDArray[np.int16]  # (z, y, x) on `spacing`, LPS axes as the phantoms use
    organs: NDArray[np.uint8]  # values as the organ model's labels
    lesions: NDArray[np.uint16]  # 0, or the lesion's number
    spacing: tuple[float, float, float]
    lesion_hu: NDArray[np.float32]  # what the lesions changed in `hu` before the slice profile
    noise_hu: NDArray[np.float32]  # (1, y, x): the noise's standard deviation, by position


def _hu(rng: np.random.Generator, enhanced: bool) -> dict[str, float]:
    """Tissue HU drawn inside the published ranges (unenhanced, or portal venous)."""
    low_high = {
        "fat": (-100, -50), "muscle": (40, 60), "bone": (700, 1100), "cortex": (1200, 1600),
        "liver": (100, 125) if enhanced else (45, 65),
        "spleen": (105, 130) if enhanced else (35, 55),
        "kidney": (150, 200) if enhanced else (20, 40),
        "blood": (140, 180) if enhanced else (45, 65),
        "bowel": (20, 45), "gas": (-1000, -950),
    }  # fmt: skip
    return {name: float(rng.uniform(*bounds)) for name, bounds in low_high.items()}


def _metaball(
    rng: np.random.Generator,
    points: tuple[NDArray[np.float32], ...],
    centre: tuple[float, float, float],
    size_mm: tuple[float, float, float],
    balls: int,
) -> NDArray[np.bool_]:
    """A smooth blob: Gaussian bumps scattered inside an ellipsoid of `size_mm` semi-axes."""
    x, y, z = points
    field = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
    for _ in range(balls):
        offset = rng.uniform(-0.55, 0.55, 3) * np.array(size_mm)
        cx, cy, cz = (c + o for c, o in zip(centre, offset, strict=True))
        sx, sy, sz = (s * rng.uniform(0.45, 0.65) for s in size_mm)
        field += np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2 + ((z - cz) / sz) ** 2))
    return field > 0.5


def unseen_study(
    seed: int,
    shape: tuple[int, int, int] = (96, 160, 160),
    spacing: tuple[float, float, float] = (2.5, 2.2, 2.2),
    lesions: int = 3,
) -> Study:
    """One study; every random choice from `seed`."""
    rng = np.random.default_rng(seed)
    hu_of = _hu(rng, enhanced=rng.random() < 0.75)
    axes = [
        (np.arange(n, dtype=np.float32) - (n - 1) / 2) * s
        for n, s in zip(shape, spacing, strict=True)
    ]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    points = (x, y, z)
    top = float(axes[0][-1])

    width, depth = float(rng.uniform(135, 180)), float(rng.uniform(95, 130))
    body = np.broadcast_to((x / width) ** 2 + (y / depth) ** 2 <= 1, shape)
    wall = float(rng.uniform(15, 30))
    cavity = np.broadcast_to((x / (width - wall)) ** 2 + (y / (depth - wall)) ** 2 <= 1, shape)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = hu_of["fat"]
    hu[body & ~cavity] = hu_of["muscle"]
    organs = np.zeros(shape, dtype=np.uint8)

    spine_y = depth - float(rng.uniform(38, 50))
    spine = np.zeros(shape, dtype=bool)
    level = top + float(rng.uniform(0, 20))
    while level > -top - 40:
        height, radius = float(rng.uniform(22, 30)), float(rng.uniform(16, 23))
        spine |= (np.hypot(x / radius, (y - spine_y) / (radius * 0.85)) <= 1) & (
            np.abs(z - level + height / 2) <= height / 2
        )
        level -= height + float(rng.uniform(6, 10))
    organs[spine] = VERTEBRAE
    hu[spine] = hu_of["bone"]
    hu[spine & ~ndimage.binary_erosion(spine)] = hu_of["cortex"]

    def place(label: int, mask: NDArray[np.bool_], tissue: str) -> None:
        mask = mask & cavity & (organs == 0)
        organs[mask] = label
        hu[mask] = hu_of[tissue]

    lean = float(rng.uniform(-0.08, 0.08))  # the aorta and IVC are not quite vertical
    aorta_r = float(rng.uniform(9, 14))
    place(AORTA, np.hypot(x - 15 - lean * z, y - spine_y + 30) <= aorta_r, "blood")
    place(
        IVC,
        np.hypot((x + 25 - lean * z) / 1.3, y - spine_y + 27) <= float(rng.uniform(7, 10)),
        "blood",
    )
    liver_centre = (
        -float(rng.uniform(45, 70)),
        -float(rng.uniform(0, 20)),
        top - float(rng.uniform(40, 80)),
    )
    place(LIVER, _metaball(rng, points, liver_centre, (85, 70, 75), 7), "liver")
    spleen_centre = (
        width - float(rng.uniform(50, 65)),
        spine_y - 25,
        top - float(rng.uniform(45, 90)),
    )
    if rng.random() > 0.1:  # a splenectomy, now and then
        place(SPLEEN, _metaball(rng, points, spleen_centre, (36, 52, 66), 4), "spleen")
    for label, side in ((KIDNEY_LEFT, 1), (KIDNEY_RIGHT, -1)):
        if rng.random() < 0.08:  # a nephrectomy
            continue
        centre = (
            side * float(rng.uniform(55, 72)),
            spine_y - 5,
            top - float(rng.uniform(110, 150)),
        )
        place(label, _metaball(rng, points, centre, (34, 30, 70), 3), "kidney")

    # Bowel loops in the cavity, some beside the liver, with fluid and gas.
    for _ in range(int(rng.integers(4, 9))):
        centre = (
            float(rng.uniform(-60, 60)),
            float(rng.uniform(-60, 20)),
            float(rng.uniform(-top, top)),
        )
        loop = _metaball(rng, points, centre, (22, 18, 22), 2) & cavity & (organs == 0)
        hu[loop] = hu_of["bowel"]
        gas = loop & (y < centre[1] - float(rng.uniform(0, 8)))  # gas rises (anterior is -y)
        hu[gas] = hu_of["gas"]

    numbered = np.zeros(shape, dtype=np.uint16)
    without_lesions = hu.copy()
    inside = np.argwhere(ndimage.binary_erosion(organs == LIVER, iterations=3))
    for number in range(1, lesions + 1):
        if len(inside) == 0:
            break
        k, j, i = inside[rng.integers(len(inside))]
        centre = (float(x[0, 0, i]), float(y[0, j, 0]), float(z[k, 0, 0]))
        radius = float(rng.uniform(5, 16))
        blob = _metaball(rng, points, centre, (radius,) * 3, 2) & (organs == LIVER)
        if not blob.any():
            continue
        numbered[blob] = number
        if rng.random() < 0.3:
            hu[blob] = float(rng.uniform(0, 15))  # a cyst
        else:
            hu[blob] = hu_of["liver"] - float(rng.uniform(30, 70))
            rim = blob & ~ndimage.binary_erosion(blob)
            hu[rim] = hu_of["liver"] + float(rng.uniform(5, 25))  # an enhancing rim

    lesion_hu = hu - without_lesions
    hu = ndimage.gaussian_filter(hu, SLICE_PROFILE)  # a slice profile wider than the pixel
    sigma, weight = float(rng.uniform(6, 25)), _centre_weight(x, y, width, depth)
    hu += _pink_noise(rng, shape, sigma) * weight
    return Study(
        np.clip(np.rint(hu), -1024, 3071).astype(np.int16),
        organs,
        numbered,
        spacing,
        lesion_hu,
        sigma * weight,
    )


def detectability(study: Study, lesion: NDArray[np.bool_]) -> float:
    """The ideal observer's d' for the lesion at `lesion`: how far it stands out of the noise
    to a reader who knows exactly what it looks like and where, and the study without it
    (signal and background known exactly, after Barrett and Myers). Its signal is what it
    changed in the image, through the slice profile; the noise, the generator's own, taken as
    stationary at the standard deviation it has at the lesion's centre (it varies slowly across
    the body) and as Gaussian. d'^2 sums |signal|^2 / noise power over the frequencies. No
    reader does better; Rose's criterion puts reliable detection at d' of about 5."""
    return MatchedFilter.of(study, lesion).d_prime


def centre_voxel(mask: NDArray[np.bool_]) -> tuple[int, ...]:
    """The voxel nearest `mask`'s centre of mass."""
    return tuple(round(c) for c in ndimage.center_of_mass(mask))


def correlate(
    first: NDArray[np.complex128], second: NDArray[np.complex128], shape: tuple[int, ...]
) -> NDArray[np.float64]:
    """sum_y a(y) b(y + x) at every x, from the spectra of a and b (periodic)."""
    return np.fft.irfftn(np.conj(first) * second, s=shape, axes=(0, 1, 2))


@dataclass(frozen=True)
class MatchedFilter:
    """A lesion's prewhitened matched filter over its study, answering at each place how
    strongly a lesion just like it seems centred there, in standard deviations of the answer
    to the noise: d' where it is, and 1 for the noise alone."""

    template: NDArray[np.complex128]  # the lesion's signal centred on the origin, its rfftn
    in_place: NDArray[np.complex128]  # the lesion's signal where it lies, its rfftn
    power: NDArray[np.float64]  # the noise's, as `noise_power` gives it
    d_prime: float
    shape: tuple[int, ...]  # the study's

    @classmethod
    def of(cls, study: Study, lesion: NDArray[np.bool_]) -> "MatchedFilter":
        """The filter for `lesion`, the noise taken as at its centre (`unseen_ct.detectability`)."""
        centre = centre_voxel(lesion)
        signal = ndimage.gaussian_filter(np.where(lesion, study.lesion_hu, 0), SLICE_PROFILE)
        shape = signal.shape
        template = np.fft.rfftn(np.roll(signal, tuple(-c for c in centre), axis=(0, 1, 2)))
        power = noise_power(shape, float(study.noise_hu[0, centre[1], centre[2]]))
        energy = (_hermitian_weights(shape) * np.abs(template) ** 2 / power).sum()
        return cls(template, np.fft.rfftn(signal), power, float(np.sqrt(energy)), shape)

    def answer(self, spectrum: NDArray[np.complex128]) -> NDArray[np.float64]:
        """The filter's answer at every place to an image of the study's shape, its rfftn."""
        scale = np.prod(self.shape) / self.d_prime
        return scale * correlate(self.template, spectrum / self.power, self.shape)

    def noise(self, rng: np.random.Generator) -> NDArray[np.complex128]:
        """The rfftn of a draw of the noise (Gaussian, of the filter's power spectrum)."""
        white = np.fft.rfftn(rng.normal(size=self.shape))
        return white * np.sqrt(self.power / np.prod(self.shape))


def noise_power(shape: tuple[int, ...], sigma: float) -> NDArray[np.float64]:
    """The expected |rfftn|^2 of the study's noise over `shape`, per coefficient: `_pink_noise`
    at `sigma`, and the rounding to whole HU (uniform, 1/12 HU^2)."""
    share = 1 / np.maximum(_frequencies(shape), LOWEST_FREQUENCY) ** 2
    share /= float((_hermitian_weights(shape) * share).sum())
    voxels = int(np.prod(shape))
    return sigma**2 * voxels**2 * share + voxels / 12


def _pink_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], sigma: float
) -> NDArray[np.float32]:
    """Gaussian noise with a 1/f amplitude spectrum, scaled to `sigma` HU."""
    spectrum = np.fft.rfftn(rng.normal(size=shape))
    amplitude = 1 / np.maximum(_frequencies(shape), LOWEST_FREQUENCY)
    noise = np.fft.irfftn(spectrum * amplitude, s=shape, axes=(0, 1, 2))
    return (noise * sigma / noise.std()).astype(np.float32)


def _frequencies(shape: tuple[int, ...]) -> NDArray[np.float64]:
    """How many cycles per voxel each coefficient of `np.fft.rfftn` over `shape` stands for."""
    return np.sqrt(
        sum(
            np.meshgrid(
                *[np.fft.fftfreq(n) ** 2 for n in shape[:-1]],
                np.fft.rfftfreq(shape[-1]) ** 2,
                indexing="ij",
            )
        )
    )


def _hermitian_weights(shape: tuple[int, ...]) -> NDArray[np.float64]:
    """How many coefficients of the full spectrum each of `np.fft.rfftn`'s stands for: two
    where the last axis's mirror image was left out, one at zero and at Nyquist."""
    last = np.full(shape[-1] // 2 + 1, 2.0)
    last[0] = 1.0
    if shape[-1] % 2 == 0:
        last[-1] = 1.0
    return np.broadcast_to(last, (*shape[:-1], last.size))


def _centre_weight(
    x: NDArray[np.float32], y: NDArray[np.float32], width: float, depth: float
) -> NDArray[np.float32]:
    """Noise is stronger where the body is thickest (fewer photons reach the middle)."""
    return (1.2 - 0.4 * np.clip((x / width) ** 2 + (y / depth) ** 2, 0, 1)).astype(np.float32)
