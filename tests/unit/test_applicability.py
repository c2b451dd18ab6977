"""A model's declared domain against a series' facts: outside when a stated fact contradicts
it, unknown (findings for review) when the series does not state it; read from real headers."""

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from appliance.domain.applicability import Acquisition, Domain, check
from appliance.inference.applicability import acquisition_of, verdict
from appliance.inference.catalog import load_catalog
from appliance.phantoms.dicom import write_us_cine
from appliance.phantoms.ultrasound import generate_cine

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
ABDOMINAL_US = Domain(modalities=["US"], image_types=["ABDOMINAL"], rows=(128, 1200))


def test_a_stated_fact_outside_the_domain_puts_the_series_outside() -> None:
    echo = Acquisition("US", image_type=("DERIVED", "PRIMARY", "EPICARDIAL"), rows=240)
    found = check(ABDOMINAL_US, echo)
    assert found.outside == ("image type EPICARDIAL is none of ABDOMINAL",)
    assert not found.inside
    assert (
        check(ABDOMINAL_US, Acquisition("CT", rows=512)).outside
        == (
            "modality CT is not US",
            "image type states no exam type",
        )[:1]
    )


def test_an_unstated_fact_leaves_the_domain_unknown_not_outside() -> None:
    found = check(ABDOMINAL_US, Acquisition("US", image_type=("ORIGINAL", "PRIMARY")))
    assert found.inside
    assert found.unknown == ("image type states no exam type", "rows not stated")


def test_ranges_and_exclusions() -> None:
    ct = Domain(
        modalities=["CT"],
        excluded_image_types=["LOCALIZER"],
        slice_thickness_mm=(0.5, 5.0),
    )
    scout = Acquisition("CT", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), slice_thickness_mm=1)
    assert check(ct, scout).outside == ("image type LOCALIZER is excluded",)
    thick = Acquisition("CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"), slice_thickness_mm=10)
    assert check(ct, thick).outside == ("slice thickness 10 is outside 0.5 to 5",)
    assert check(ct, Acquisition("ct", slice_thickness_mm=5.0)).inside  # bounds are inclusive


@pytest.mark.parametrize(
    ("name", "outside"),
    [
        ("examples_ybr_color.dcm", "EPICARDIAL"),  # the echocardiogram cine
        ("examples_palette.dcm", "OBSTETRICAL"),
        ("CT_small.dcm", "modality CT is not US"),
    ],
)
def test_real_files_outside_the_reference_cyst_models_domain(name: str, outside: str) -> None:
    header = dcmread(get_testdata_file(name, download=False) or "", stop_before_pixels=True)
    catalog = load_catalog(REPOSITORY)
    models = [catalog.contract(model) for model in catalog.pipelines["us"].models]
    found = verdict(models, acquisition_of(header))
    assert any(outside in why for why in found.outside), found
    assert all(why.startswith("us_frame v1: ") for why in found.outside)


def test_the_phantom_cine_is_inside_the_reference_cyst_models_domain(tmp_path: Path) -> None:
    path = write_us_cine(generate_cine(5, frames=2), tmp_path / "cine.dcm")
    catalog = load_catalog(REPOSITORY)
    models = [catalog.contract(model) for model in catalog.pipelines["us"].models]
    acquisition = acquisition_of(dcmread(path, stop_before_pixels=True))
    assert acquisition.pixel_spacing_mm is not None  # from the ultrasound region calibration
    assert verdict(models, acquisition) == verdict([], acquisition)  # inside, nothing unknown


def test_malformed_values_read_as_unstated() -> None:
    header = dcmread(get_testdata_file("CT_small.dcm", download=False) or "")
    for tag, value in ((0x00180050, b"thick "), (0x00280030, b"a\\b ")):
        header[tag] = RawDataElement(Tag(tag), "DS", len(value), value, 0, False, True)
    acquisition = acquisition_of(header)
    assert acquisition.slice_thickness_mm is None
    assert acquisition.pixel_spacing_mm is None
    assert acquisition.field_of_view_mm is None
