"""Training crops as other scanners might have made them (numpy and SciPy only, so that the
serving install's tests can hold it to what it promises)."""

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

Volume = tuple[NDArray[np.float32], NDArray[np.int64]]  # normalised image, class labels


def augment(rng: np.random.Generator, volume: Volume, spacing: float, window_hu: float) -> Volume:
    """A crop as another scanner might have made it, after nnU-Net's default augmentation
    (mirroring, low resolution, noise, blur, brightness and contrast, each now and then):
    the low-resolution step is an acquisition at up to 2.2 times the spacing in plane and 3.3
    times along z (slices up to 5 mm at 1.5 mm), with its slice profile, resampled back
    linearly as serving resamples; noise is fine or coarse, in HU of the window of
    `window_hu`. The labels keep the true extent (mirrored with the image)."""
    image, labels = volume
    for axis in range(3):
        if rng.random() < 0.5:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    image = np.ascontiguousarray(image, dtype=np.float32)
    if rng.random() < 0.5:
        image = coarser_acquisition(image, (rng.uniform(1, 3.3), *(rng.uniform(1, 2.2),) * 2))
    hu = 1 / window_hu  # one HU in the normalised image
    if rng.random() < 0.3:
        image += rng.normal(0, rng.uniform(0, 12) * hu, image.shape).astype(np.float32)
    if rng.random() < 0.3:
        grain = rng.uniform(2, 6) / spacing  # blotches 2 to 6 mm across, in voxels
        coarse = ndimage.gaussian_filter(rng.normal(size=image.shape).astype(np.float32), grain)
        image += coarse * np.float32(rng.uniform(0, 12) * hu / max(float(coarse.std()), 1e-6))
    if rng.random() < 0.2:
        image = ndimage.gaussian_filter(image, rng.uniform(0.5, 1.0))
    if rng.random() < 0.15:
        image *= np.float32(rng.uniform(0.75, 1.25))
    if rng.random() < 0.15:
        mean = np.float32(image.mean())
        image = (image - mean) * np.float32(rng.uniform(0.75, 1.25)) + mean
    return image, np.ascontiguousarray(labels)


def coarser_acquisition(
    image: NDArray[np.float32], factors: tuple[float, float, float]
) -> NDArray[np.float32]:
    """`image` as a scanner with voxels `factors` times larger would have sampled it (a
    Gaussian profile as wide at half its height as the larger voxel), then resampled back onto
    the image's grid linearly, as serving resamples a study onto a model's grid."""
    larger = np.array(factors)
    profile = ndimage.gaussian_filter(image, larger / 2.355)
    small = ndimage.zoom(profile, 1 / larger, order=1, grid_mode=True, mode="nearest")
    back = np.array(image.shape) / np.array(small.shape)
    return np.asarray(
        ndimage.zoom(small, back, order=1, grid_mode=True, mode="nearest"), dtype=np.float32
    )
