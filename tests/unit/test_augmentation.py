"""Training augmentation keeps each crop's labels on its image, whatever it draws."""

import numpy as np
import pytest

from appliance.training.augmentation import augment, coarser_acquisition


def _crop() -> tuple[np.ndarray, np.ndarray]:
    """A 40-voxel cube holding one bright 12-voxel block off its centre (class 1) and a dim
    one (class 2), so a flip of the image without its labels would move them apart."""
    labels = np.zeros((40, 40, 40), dtype=np.int64)
    labels[4:16, 6:18, 20:32] = 1
    labels[24:34, 22:34, 5:15] = 2
    image = np.where(labels == 1, 0.9, np.where(labels == 2, 0.5, 0.1)).astype(np.float32)
    return image, labels


@pytest.mark.parametrize("seed", range(60))
def test_labels_stay_on_their_image(seed: int) -> None:
    image, labels = _crop()
    augmented, moved = augment(np.random.default_rng(seed), (image, labels), 1.5, 350.0)
    assert augmented.shape == image.shape
    assert augmented.dtype == np.float32
    assert moved.shape == labels.shape
    # The labels are only mirrored: every class keeps its voxel count.
    assert [int((moved == c).sum()) for c in range(3)] == [
        int((labels == c).sum()) for c in range(3)
    ]
    # and the image under each class is still that class's: bright, dim, background.
    bright, dim, background = (float(augmented[moved == c].mean()) for c in (1, 2, 0))
    assert bright > dim + 0.15 > background + 0.3


def test_the_same_draw_gives_the_same_crop() -> None:
    """Training resumes from a checkpoint with the same stream: augmentation must repeat."""
    first = augment(np.random.default_rng(3), _crop(), 1.5, 350.0)
    second = augment(np.random.default_rng(3), _crop(), 1.5, 350.0)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_a_coarser_acquisition_spreads_a_thin_plane_along_its_coarser_axis() -> None:
    """A one-voxel plane across z, acquired with slices 3 times thicker: spread over several
    slices at a third of its height, its total kept; in plane, nothing changes."""
    image = np.zeros((30, 12, 12), dtype=np.float32)
    image[15] = 1.0
    acquired = coarser_acquisition(image, (3.0, 1.0, 1.0))
    assert acquired.shape == image.shape
    profile = acquired[:, 6, 6]
    assert profile.max() < 0.5
    assert int((profile > 0.05).sum()) >= 5
    assert abs(float(profile.sum()) - 1.0) < 0.1
    np.testing.assert_allclose(acquired, acquired[:, :1, :1] * np.ones_like(acquired), atol=1e-6)
