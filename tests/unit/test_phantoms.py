"""Phantoms match the published calibration values they claim (MODELS.md)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from appliance.phantoms.ct import Grid, LesionKind, Organ, Phase, cubic_zoom, generate_ct
from appliance.phantoms.ultrasound import generate_cine, rayleigh_envelope

GRID = Grid(shape=(100, 134, 134), spacing=(3.0, 3.0, 3.0))


@pytest.fixture(scope="module", params=[Phase.UNENHANCED, Phase.PORTAL_VENOUS])
def phantom(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return generate_ct(7, GRID, phase=request.param, lesion_count=3, noise_hu=10.0)


def interior_mean(phantom, mask) -> float:  # type: ignore[no-untyped-def]
    core = ndimage.binary_erosion(mask, iterations=2)
    return float(phantom.hu[core].mean())


def test_same_seed_same_phantom() -> None:
    first, second = generate_ct(3, GRID), generate_ct(3, GRID)
    assert np.array_equal(first.hu, second.hu)
    assert np.array_equal(first.organs, second.organs)
    assert not np.array_equal(first.hu, generate_ct(4, GRID).hu)


@settings(max_examples=40, deadline=None)
@given(
    coarse=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(1, 40)),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_deformation_field_is_zoomed_as_scipy_zooms_it(
    coarse: tuple[int, int, int], shape: tuple[int, int, int], seed: int
) -> None:
    """One axis at a time, the same field as scipy's cubic zoom of the whole, to within the
    rounding of float32 (summed in another order), up or down, to any shape."""
    field = np.random.default_rng(seed).normal(0.0, 1.0, size=coarse).astype(np.float32)
    factors = [size / count for size, count in zip(shape, coarse, strict=True)]
    whole = ndimage.zoom(field, factors, order=3, mode="nearest")[
        : shape[0], : shape[1], : shape[2]
    ]
    ours = cubic_zoom(field, shape)
    assert ours.shape == whole.shape == shape
    assert np.allclose(ours, whole, rtol=0, atol=1e-6)


def test_organ_volumes_are_adult_sized(phantom) -> None:  # type: ignore[no-untyped-def]
    assert 800 <= phantom.organ_volume_ml(Organ.LIVER) <= 1800
    assert 60 <= phantom.organ_volume_ml(Organ.SPLEEN) <= 400
    for kidney in (Organ.KIDNEY_LEFT, Organ.KIDNEY_RIGHT):
        extent = np.flatnonzero((phantom.organs == kidney).any(axis=(1, 2)))
        length_mm = (extent[-1] - extent[0] + 1) * GRID.spacing[0]
        assert 80 <= length_mm <= 140
    assert all((phantom.organs == organ).any() for organ in Organ)


def test_tissue_attenuation_matches_the_phase(phantom) -> None:  # type: ignore[no-untyped-def]
    liver = interior_mean(phantom, phantom.organs == Organ.LIVER)
    spleen = interior_mean(phantom, phantom.organs == Organ.SPLEEN)
    bone = interior_mean(phantom, phantom.organs == Organ.VERTEBRAE)
    if phantom.phase is Phase.UNENHANCED:
        assert 45 <= liver <= 65
        assert 35 <= spleen <= 55
        assert 5 <= liver - spleen <= 15
    else:
        assert 95 <= liver <= 130  # about 56 HU of enhancement
    assert bone >= 700
    air = phantom.hu[0, :5, :5]
    assert float(air.mean()) < -950


def test_noise_is_in_the_clinical_range(phantom) -> None:  # type: ignore[no-untyped-def]
    core = ndimage.binary_erosion(phantom.organs == Organ.LIVER, iterations=3)
    core &= phantom.lesions == 0
    residual = phantom.hu.astype(np.float32) - ndimage.uniform_filter(
        phantom.hu.astype(np.float32), 7
    )
    assert 4 <= float(residual[core].std()) <= 20


def test_lesions_are_inside_the_liver_and_hypodense(phantom) -> None:  # type: ignore[no-untyped-def]
    liver = interior_mean(phantom, phantom.organs == Organ.LIVER)
    assert phantom.lesion_list
    for lesion in phantom.lesion_list:
        mask = phantom.lesions == lesion.label
        assert np.all(phantom.organs[mask] == Organ.LIVER)
        center = (
            float(phantom.hu[ndimage.binary_erosion(mask)].mean())
            if lesion.diameter_mm > 12
            else None
        )
        if center is None:
            continue
        if lesion.kind is LesionKind.CYST:
            assert center <= 30
        else:
            assert 15 <= liver - center <= 85


def test_speckle_is_fully_developed() -> None:
    envelope = rayleigh_envelope(np.random.default_rng(0), (512, 512), (1.5, 0.8))
    assert float(envelope.mean() / envelope.std()) == pytest.approx(1.91, abs=0.05)


def test_cine_target_present_in_some_frames_only() -> None:
    cine = generate_cine(11, frames=12, present_fraction=0.5)
    assert cine.frames.shape == (12, 256, 256)
    assert cine.frames.dtype == np.uint8
    assert cine.present.sum() == 6
    for frame, mask, present in zip(cine.frames, cine.masks, cine.present, strict=True):
        assert mask.any() == present
        if present:
            around = ndimage.binary_dilation(mask, iterations=8) & ~ndimage.binary_dilation(
                mask, iterations=3
            )
            assert float(frame[mask].mean()) < 0.6 * float(frame[around].mean())
    again = generate_cine(11, frames=12, present_fraction=0.5)
    assert np.array_equal(cine.frames, again.frames)


def test_varied_phantoms_vary_what_studies_vary_and_leave_plain_ones_alone() -> None:
    grid = Grid(shape=(60, 100, 100), spacing=(4.0, 4.0, 4.0))
    plain, varied = generate_ct(5, grid), generate_ct(5, grid, varied=True)
    assert np.array_equal(varied.hu, generate_ct(5, grid, varied=True).hu)  # still seeded
    assert not np.array_equal(plain.hu, varied.hu)
    phantoms = [generate_ct(seed, grid, varied=True) for seed in range(1_000, 1_012)]
    body = [ndimage.binary_erosion(p.hu > -300, iterations=2) for p in phantoms]
    gas = [
        int(((p.hu < -900) & ndimage.binary_fill_holes(b)).sum())
        for p, b in zip(phantoms, body, strict=True)
    ]
    assert sum(count > 0 for count in gas) >= 6  # bowel gas (and lung) inside the body
    assert len({p.phase for p in phantoms}) >= 2
    livers = [p.organ_volume_ml(Organ.LIVER) for p in phantoms]
    assert max(livers) - min(livers) > 300  # organs of many sizes


def test_cines_vary_and_some_hold_no_target() -> None:
    cines = [generate_cine(seed, frames=4, size=128, present_fraction=None) for seed in range(30)]
    assert any(not cine.present.any() for cine in cines)
    assert any(cine.present.all() for cine in cines)
    spacings = {round(cine.pixel_spacing_mm, 2) for cine in cines}
    assert len(spacings) > 20  # the probe's depth and sector differ
