"""The gate validates in memory and proves the written bytes are the validated ones, instead
of reading every element back strictly: it must refuse everything the strict read-back
(`tests/support/strict_gate.py`, the gate before it) refuses, send the same bytes where both
pass, and refuse what the read-back let through with data lost on the way."""

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.tag import Tag
from pydicom.uid import RLELossless

from appliance.app.pipelines import run_frames
from appliance.domain.encoding import ITEM, MalformedEncoding, element_tree
from appliance.domain.findings import SegmentationType
from appliance.inference.backend import OnnxRuntimeBackend
from appliance.inference.catalog import load_catalog
from appliance.phantoms.ct import Grid, generate_ct
from appliance.phantoms.dicom import write_us_cine
from appliance.phantoms.ultrasound import generate_cine
from appliance.results.encode import ct_results, ultrasound_results
from appliance.results.rle import rle_frames
from appliance.results.segmentation import Equipment
from appliance.results.validate import InvalidResult, check
from tests.support.strict_gate import Refused, strict_read_back
from tests.support.truth import truth_study

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
EQUIPMENT = Equipment("Appliance project", "DICOM inference appliance", "0.1.0", "test-1")

Case = tuple[str, bytes, list[Dataset]]  # an object's encoding and its sources


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """Every kind of object the appliance sends, as read back from its encoding: a CT's
    BINARY and label map SEGs with their SRs, an ultrasound SEG, SR and outlined cine."""
    phantom = generate_ct(5, Grid((12, 40, 40), (5.0, 7.0, 7.0)), lesion_count=1)
    sources, findings = truth_study(phantom, tmp_path_factory.mktemp("ct"))
    made: list[Case] = []
    for kind in SegmentationType:
        for result in ct_results(sources, findings, kind, EQUIPMENT):
            made.append((f"{kind.value} {result.modality}", result.encoded, sources))
    cine = write_us_cine(generate_cine(7, frames=6), tmp_path_factory.mktemp("us") / "us.dcm")
    catalog = load_catalog(REPOSITORY)
    run = run_frames(catalog.pipelines["us"], catalog, cine, OnnxRuntimeBackend(REPOSITORY, 2))
    assert run.findings.present, "the phantom cine shows its cyst"
    for result in ultrasound_results(run.source, run.findings, EQUIPMENT, run.frames):
        made.append((f"ultrasound {result.modality}", result.encoded, [run.source]))
    assert [name for name, _, _ in made] == [
        "binary SEG", "binary SR", "labelmap SEG", "labelmap SR",
        "ultrasound SEG", "ultrasound SR", "ultrasound US",
    ]  # fmt: skip
    return made


def _read(encoded: bytes) -> Dataset:
    return dcmread(BytesIO(encoded))


def _refusals(make: Callable[[], Dataset], sources: list[Dataset]) -> tuple[bool, bool]:
    """Whether the strict read-back and the gate refuse the object `make` makes, each given
    its own."""
    try:
        strict_read_back(make(), sources)
        old = False
    except Refused:
        old = True
    try:
        check(make(), sources)
        new = False
    except InvalidResult:
        new = True
    return old, new


def _damaged(encoded: bytes, damage: list[tuple[tuple[object, ...], bytes]]) -> Dataset:
    result = _read(encoded)
    for path, value in damage:
        _put_raw(result, path, value)
    return result


def test_valid_objects_pass_both_and_the_same_bytes_are_sent(cases: list[Case]) -> None:
    for name, encoded, sources in cases:
        sent = check(_read(encoded), sources).encoded
        assert sent == strict_read_back(_read(encoded), sources) == encoded, name


def _leaves(dataset: Dataset, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Paths (tag, item index, tag, ...) to every value in `dataset` but pixel data."""
    found: list[tuple[object, ...]] = []
    for element in dataset:
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                found += _leaves(item, (*path, element.tag, index))
        elif element.tag != Tag("PixelData"):
            found.append((*path, element.tag))
    return found


def _put_raw(result: Dataset, path: tuple[object, ...], value: bytes) -> str:
    """Replace the value at `path` with `value` as it would arrive in bytes (no assignment
    check on the way), and return its VR."""
    dataset = result
    for tag, index in zip(path[:-1:2], path[1:-1:2], strict=True):
        dataset = dataset[tag].value[index]  # type: ignore[index]
    tag = Tag(path[-1])  # type: ignore[arg-type]
    vr = dataset.get_item(tag).VR  # not converting what an earlier damage put there
    dataset[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)  # type: ignore[assignment]
    return str(vr)


# Values that break the rules of some VR: wrong characters, lengths, formats, components.
BROKEN = [b"2026-13-45", b"25:61:0", b"lower", b"1.2.abc", b"1" * 70, b"A=B=C=D", b"\x1b$", b"\xff"]


def test_every_broken_value_the_read_back_refuses_the_gate_refuses(cases: list[Case]) -> None:
    """Each broken value in turn in one element of every VR, at the top level and nested,
    across the object kinds."""
    compared = refused = 0
    seen: set[tuple[str, bool]] = set()
    for name, encoded, sources in cases:
        result = _read(encoded)
        for path in _leaves(result):
            where = (_vr_at(result, path), len(path) > 1)
            if where in seen:
                continue
            seen.add(where)
            for value in BROKEN:
                damage = [(path, value)]
                old, new = _refusals(lambda: _damaged(encoded, damage), sources)  # noqa: B023
                assert new or not old, f"{name}: {where} at {path} = {value!r} got through"
                compared += 1
                refused += old
    assert refused > 100, (compared, refused)
    assert compared > refused, "some broken values are valid somewhere: the mix is varied"


def _vr_at(result: Dataset, path: tuple[object, ...]) -> str:
    dataset = result
    for tag, index in zip(path[:-1:2], path[1:-1:2], strict=True):
        dataset = dataset[tag].value[index]  # type: ignore[index]
    return str(dataset[Tag(path[-1])].VR)  # type: ignore[arg-type]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_damage_the_read_back_refuses_the_gate_refuses(
    cases: list[Case], data: st.DataObject
) -> None:
    name, encoded, sources = cases[data.draw(st.integers(0, len(cases) - 1))]
    leaves = _leaves(_read(encoded))
    damage = []
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(leaves))
        value = data.draw(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
        damage.append((path, value + b" " * (len(value) % 2)))
    old, new = _refusals(lambda: _damaged(encoded, damage), sources)
    assert new or not old, f"{name}: damage the strict read-back refuses got through"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (
            lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]),
            "pixel data|do not parse",
        ),
        (lambda ds: setattr(ds, "NumberOfFrames", int(ds.NumberOfFrames) + 1), "frames"),
        (lambda ds: setattr(ds, "PatientID", "SOMEONE ELSE"), "PatientID differs"),
        (lambda ds: setattr(ds, "StudyInstanceUID", "1.2.3.4"), "StudyInstanceUID differs"),
    ],
)
def test_damage_to_pixels_and_identity_is_refused_by_both(
    cases: list[Case], damage: Callable[[Dataset], None], reason: str
) -> None:
    for name, encoded, sources in cases:
        if "PixelData" not in _read(encoded):
            continue

        def damaged(encoded: bytes = encoded) -> Dataset:
            result = _read(encoded)
            damage(result)
            return result

        assert _refusals(damaged, sources) == (True, True), name
        with pytest.raises(InvalidResult, match=reason):
            check(damaged(), sources)


def test_text_its_character_set_cannot_carry_is_refused_not_replaced(cases: list[Case]) -> None:
    """The read-back wrote '?' for what Latin-1 cannot carry and passed it; the gate says no."""
    name, encoded, sources = cases[1]  # an SR, ISO_IR 100
    assert _read(encoded).SpecificCharacterSet == "ISO_IR 100", name

    def described(text: str) -> Dataset:
        result = _read(encoded)
        result.SeriesDescription = text
        return result

    cyrillic = "AI report \u0416"  # not in Latin-1
    assert _refusals(lambda: described(cyrillic), sources) == (False, True)
    with pytest.raises(InvalidResult, match="SeriesDescription cannot be carried"):
        check(described(cyrillic), sources)
    assert "\u00e9".encode("latin-1") in check(described("AI report \u00e9"), sources).encoded


def test_the_reason_names_the_attribute_not_its_value(cases: list[Case]) -> None:
    name, encoded, sources = cases[1]
    with pytest.raises(InvalidResult) as refused:
        check(_damaged(encoded, [((Tag("PatientName"),), b"A=B=C=SECRET")]), sources)
    assert "PatientName" in str(refused.value), name
    assert "SECRET" not in str(refused.value)


def test_the_element_tree_follows_every_length_and_refuses_cut_or_padded_bytes(
    cases: list[Case],
) -> None:
    for name, encoded, _ in cases:
        meta_end = 132 + 12 + int.from_bytes(encoded[140:144], "little")
        tree = element_tree(encoded, meta_end)
        items = sum(1 for _, tag, _ in tree if tag == ITEM)
        nested = sum(1 for depth, tag, _ in tree if depth > 0 and tag != ITEM)
        assert items > 0, name
        assert nested > 0, name
        for broken in (
            encoded[:-3],
            encoded + b"\0\0",
            encoded[:meta_end] + encoded[meta_end + 5 :],
        ):
            with pytest.raises(MalformedEncoding):
                element_tree(broken, meta_end)


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(1, 3),
    rows=st.integers(1, 9),
    columns=st.integers(1, 300),
    wide=st.booleans(),
    data=st.data(),
)
def test_rle_frames_decode_to_the_labels(
    frames: int, rows: int, columns: int, wide: bool, data: st.DataObject
) -> None:
    """Runs longer than a packet, lone pixels, rows of one value and 16-bit labels all come
    back from pydicom's own RLE decoder exactly."""
    dtype = np.uint16 if wide else np.uint8
    size = frames * rows * columns
    runs = data.draw(st.lists(st.tuples(st.integers(0, 600), st.integers(1, 300)), min_size=1))
    values = np.concatenate([np.full(length, value, dtype=np.int64) for value, length in runs])
    labels = np.resize(values, size).astype(dtype).reshape(frames, rows, columns)
    bits = 16 if wide else 8
    decoded, _ = get_decoder(RLELossless).as_array(
        encapsulate(rle_frames(labels)),
        rows=rows, columns=columns, number_of_frames=frames, samples_per_pixel=1,
        bits_allocated=bits, bits_stored=bits, pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
    )  # fmt: skip
    assert np.array_equal(decoded.reshape(labels.shape), labels)
