"""Pipelines as data: declarations checked with named errors, the catalog checked against the
models' contracts, states that hold a pipeline back, routing that passes disabled pipelines
over and runs shadow ones beside, and a cascade's region as a hard constraint."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.app.pipelines import identity, one_of, volume_findings
from appliance.domain.pipelines import (
    Findings,
    Governance,
    InvalidPipeline,
    Measurement,
    ModelRef,
    Pipeline,
    Region,
    Stage,
    StageKind,
    State,
    least,
)
from appliance.domain.routing import Priority, RouteRule, SeriesFacts, priority_of, route
from appliance.inference.catalog import load_catalog
from appliance.inference.ct import confine_to_filled
from appliance.inference.masks import filled

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
ORGANS = ModelRef("organ_ct", 1)
LESIONS = ModelRef("lesion_ct", 1)


def organs(**changes: object) -> Stage:
    return Stage(**{"name": "organs", "kind": StageKind.VOLUME, "model": ORGANS, **changes})  # type: ignore[arg-type]


def lesions(**changes: object) -> Stage:
    fields = {
        "name": "lesion", "kind": StageKind.REGION, "model": LESIONS,
        "findings": Findings.PER_COMPONENT, "region": Region("organs", ("liver",)),
    }  # fmt: skip
    return Stage(**{**fields, **changes})  # type: ignore[arg-type]


def test_the_reference_pipelines_load_and_name_their_models() -> None:
    catalog = load_catalog(REPOSITORY)
    assert catalog.problems == []
    assert sorted(catalog.pipelines) == ["ct", "ct_organs", "us"]
    assert catalog.pipelines["ct"].models == (LESIONS, ORGANS)
    assert catalog.pipelines["us"].frames


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ((), "no stages"),
        ((organs(), organs()), "a second stage of that name"),
        ((lesions(),), "its region comes from stage organs, which does not run before it"),
        ((organs(), lesions(region=None)), "a region stage names its region"),
        ((organs(region=Region("organs", ("liver",))),), "only a region stage has a region"),
        ((organs(), lesions(region=Region("organs", ()))), "its region names no labels"),
        ((organs(measurements=(Measurement.AREA,)),), "cannot measure area"),
        (
            (organs(measurements=(Measurement.LONGEST_AXIAL_DIAMETER,)),),
            "a longest diameter is measured per component",
        ),
        ((organs(name="Organs"),), "'Organs' is not a name"),
        (
            (organs(), Stage("frames", StageKind.FRAMES, ModelRef("us_frame", 1))),
            "a frames stage runs alone",
        ),
    ],
)
def test_a_declaration_that_cannot_run_is_refused_by_name(
    stages: tuple[Stage, ...], message: str
) -> None:
    with pytest.raises(InvalidPipeline, match=message):
        Pipeline("broken", "", stages)


def write(repository: Path, pipeline: dict[str, object]) -> None:
    path = repository / f"{pipeline['name']}.pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            {"model": {"name": "organ_ct", "version": 2}},
            "model organ_ct v2 is not in the repository",
        ),
        ({"labels": ["pancreas"]}, "organ_ct v1 has no label pancreas"),
        (
            {"model": {"name": "us_frame", "version": 1}},
            "a volume stage runs a 3D model; us_frame v1 is 2D",
        ),
        ({"kind": "frames"}, "a frames stage runs a 2D model; organ_ct v1 is 3D"),
        ({"kind": "sideways"}, r"stages\.0\.kind"),
    ],
)
def test_the_catalog_checks_each_pipeline_against_its_models(
    tmp_path: Path, stage: dict[str, object], message: str
) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY, repository)
    first = {"name": "organs", "kind": "volume", "model": {"name": "organ_ct", "version": 1}}
    write(repository, {"name": "trial", "description": "", "stages": [{**first, **stage}]})
    catalog = load_catalog(repository)
    assert "trial" not in catalog.pipelines
    assert sorted(catalog.pipelines) == ["ct", "ct_organs", "us"]  # the rest still serves
    (problem,) = catalog.problems
    assert re.search(message, problem), problem


def test_a_region_from_labels_its_stage_lacks_and_mixed_modalities_are_refused(
    tmp_path: Path,
) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(REPOSITORY, repository)
    first = {"name": "organs", "kind": "volume", "model": {"name": "organ_ct", "version": 1}}
    second = {
        "name": "lesion", "kind": "region", "model": {"name": "lesion_ct", "version": 1},
        "region": {"stage": "organs", "labels": ["brain"]}, "findings": "per_component",
    }  # fmt: skip
    write(repository, {"name": "a", "description": "", "stages": [first, second]})
    problems = load_catalog(repository).problems
    assert problems == ["pipeline a, stage lesion: its region's stage organs has no label brain"]


def test_a_pipeline_runs_as_its_least_enabled_part() -> None:
    pipeline = Pipeline("ct", "", (organs(), lesions()))
    assert least(State.ENABLED, State.SHADOW, State.DISABLED) is State.DISABLED
    assert Governance().pipeline_state(pipeline) is State.ENABLED
    assert Governance(models={LESIONS: State.SHADOW}).pipeline_state(pipeline) is State.SHADOW
    held = Governance(pipelines={"ct": State.SHADOW}, models={ORGANS: State.DISABLED})
    assert held.pipeline_state(pipeline) is State.DISABLED
    assert Pipeline("p", "", (organs(),), State.SHADOW).state is State.SHADOW


CT = "1.2.840.10008.5.1.4.1.1.2"


def facts(uid: str) -> SeriesFacts:
    return SeriesFacts(uid, "CT", frozenset({CT}), "ABDOMEN", "", "PACS", "APPLIANCE")


def test_routing_passes_a_disabled_pipeline_over_and_runs_a_shadow_one_beside() -> None:
    rules = [
        RouteRule("stroke", "ct_stroke", Priority.URGENT, modalities=frozenset({"CT"})),
        RouteRule("trial", "ct_trial", Priority.URGENT, modalities=frozenset({"CT"})),
        RouteRule("abdomen", "ct", modalities=frozenset({"CT"})),
        RouteRule("spare", "ct_organs", modalities=frozenset({"CT"})),
    ]
    states = {"ct_stroke": State.DISABLED, "ct_trial": State.SHADOW, "ct": State.ENABLED,
              "ct_organs": State.ENABLED}  # fmt: skip
    routes = route([facts("1"), facts("2")], rules, states.__getitem__).routes
    assert [(r.rule.name, r.shadow, len(r.series)) for r in routes] == [
        ("trial", True, 2),
        ("abdomen", False, 2),
    ]
    assert priority_of(routes) is Priority.NORMAL  # an urgent shadow route does not count
    states["ct_stroke"] = State.ENABLED
    assert priority_of(route([facts("1")], rules, states.__getitem__).routes) is Priority.URGENT


def test_a_cascade_keeps_only_what_lies_mostly_in_its_region() -> None:
    region = np.zeros((12, 12, 12), dtype=bool)
    region[2:9, 2:9, 2:9] = True
    region[5, 5, 5] = False  # a hole the first stage left: still inside
    labels = np.zeros(region.shape, dtype=np.uint8)
    labels[4:7, 4:7, 4:7] = 1  # inside, around the hole
    labels[7:11, 3:5, 3:5] = 2  # half inside (z 7 and 8), half out: cut to the region
    labels[0:2, 10:12, 10:12] = 1  # outside: dropped
    labels[8:12, 9:11, 2:3] = 2  # one voxel of eight inside: dropped whole
    confined = confine_to_filled(labels, filled(region))
    assert confined[5, 5, 5] == 1
    assert (confined[4:7, 4:7, 4:7] == 1).all()
    assert (confined[7:9, 3:5, 3:5] == 2).all()
    assert not confined[9:11].any()
    assert not confined[0:2].any()
    inside = region.copy()
    inside[5, 5, 5] = True
    assert not ((confined > 0) & ~inside).any()


def test_a_lesion_a_mirrored_pass_does_not_find_is_flagged_and_one_it_finds_is_not() -> None:
    """The reference lesion labels ask a mirrored second pass to agree (Dice >= 0.5) with each
    lesion; the agreement is taken around each lesion, so a neighbour does not count."""
    catalog = load_catalog(REPOSITORY)
    pipeline = catalog.pipelines["ct"]
    organ_map = np.zeros((20, 40, 40), dtype=np.uint8)
    organ_map[2:18, 2:38, 2:38] = 1  # liver
    lesion_map = np.zeros_like(organ_map)
    lesion_map[5:10, 5:12, 5:12] = 1  # the mirrored pass finds it, a voxel smaller
    lesion_map[5:10, 25:32, 25:32] = 1  # the mirrored pass finds nothing here
    lesion_map[12:16, 5:9, 20:24] = 2  # found three voxels over: a quarter overlaps
    second = np.zeros_like(organ_map)
    second[5:10, 5:11, 5:11] = 1
    second[12:16, 5:9, 23:27] = 2  # counted up to two voxels beyond the lesion's box
    maps = {"organs": organ_map, "lesion": lesion_map}
    run = identity(pipeline, catalog, ["1.2.3"])
    hu = np.where(lesion_map > 0, 40.0, 100.0)  # lesions 60 HU below the liver
    findings = volume_findings(
        run, pipeline, catalog, maps, (2.0, 2.0, 2.0), hu, mirrored={"lesion": second}
    )
    reviews = {s.tracking_id: s.review for s in findings.segments if s.stage == "lesion"}
    assert reviews == {
        "lesion 1": (),
        "lesion 2": ("a mirrored pass of the model agrees 0.00, below 0.50",),
        "lesion 3": ("a mirrored pass of the model agrees 0.29, below 0.50",),
    }
    without = volume_findings(run, pipeline, catalog, maps, (2.0, 2.0, 2.0))
    assert not any(s.review for s in without.segments if s.stage == "lesion")


def test_a_lesion_as_dense_as_the_liver_around_it_is_flagged() -> None:
    """The reference lesion labels ask for 25 HU between a lesion and the liver within three
    voxels of it; only the liver counts, not the fat beyond its edge."""
    catalog = load_catalog(REPOSITORY)
    pipeline = catalog.pipelines["ct"]
    organ_map = np.zeros((20, 40, 40), dtype=np.uint8)
    organ_map[2:18, 2:38, 2:38] = 1  # liver
    hu = np.where(organ_map == 1, 100.0, -100.0)  # fat around it
    lesion_map = np.zeros_like(organ_map)
    lesion_map[5:10, 8:14, 8:14] = 1
    hu[5:10, 8:14, 8:14] = 40.0  # 60 HU below the liver: stated
    lesion_map[5:10, 25:31, 25:31] = 1
    hu[5:10, 25:31, 25:31] = 90.0  # 10 HU below it: for review
    lesion_map[12:16, 2:6, 20:24] = 1
    hu[12:16, 2:6, 20:24] = 50.0  # at the liver's edge: with the fat beyond, its ring is near 50
    run = identity(pipeline, catalog, ["1.2.3"])
    findings = volume_findings(
        run, pipeline, catalog, {"organs": organ_map, "lesion": lesion_map}, (2.0, 2.0, 2.0), hu
    )
    reviews = {s.tracking_id: s.review for s in findings.segments if s.stage == "lesion"}
    assert reviews == {
        "lesion 1": (),
        "lesion 2": ("10 HU from the tissue around it, below 25 HU",),
        "lesion 3": (),
    }


def test_a_lesion_under_ten_millimetres_is_flagged_too_small_to_characterise() -> None:
    """The reference lesion labels ask for 10 mm of longest axial diameter (RECIST 1.1's
    measurable lesion); the diameter is the one the SR states."""
    catalog = load_catalog(REPOSITORY)
    pipeline = catalog.pipelines["ct"]
    organ_map = np.zeros((20, 40, 40), dtype=np.uint8)
    organ_map[2:18, 2:38, 2:38] = 1  # liver
    lesion_map = np.zeros_like(organ_map)
    lesion_map[5:9, 8:12, 8:12] = 1  # 4 x 4 voxels of 2 mm: 10.5 mm across the diagonal
    lesion_map[5:9, 25:28, 25:28] = 1  # 3 x 3: 7.7 mm
    hu = np.where(lesion_map > 0, 40.0, 100.0)
    run = identity(pipeline, catalog, ["1.2.3"])
    findings = volume_findings(
        run, pipeline, catalog, {"organs": organ_map, "lesion": lesion_map}, (2.0, 2.0, 2.0), hu
    )
    lesions = [s for s in findings.segments if s.stage == "lesion"]
    diameters = {m.segment: m.longest_axial_diameter_mm for m in findings.measurements}
    assert [round(diameters[s.number], 1) for s in lesions] == [10.5, 7.7]
    assert [s.review for s in lesions] == [
        (),
        ("8 mm across, too small to characterise (below 10 mm)",),
    ]


def test_a_kidney_where_the_other_is_enhanced_and_it_is_not_flags_both() -> None:
    """The reference kidneys ask to lie within 40 HU of each other's mean density: a "kidney"
    the organ model finds on the muscle of an empty renal fossa (a nephrectomy) beside an
    enhanced kidney is flagged, and so is its pair, since which is wrong cannot be told."""
    catalog = load_catalog(REPOSITORY)
    pipeline = catalog.pipelines["ct_organs"]
    organ_map = np.zeros((20, 40, 40), dtype=np.uint8)
    organ_map[5:15, 5:15, 5:12] = 3  # kidney left
    organ_map[5:15, 5:15, 28:35] = 4  # kidney right
    hu = np.where(organ_map == 3, 160.0, 50.0)
    run = identity(pipeline, catalog, ["1.2.3"])

    def kidney_reviews(hu: np.ndarray) -> dict[str, tuple[str, ...]]:
        findings = volume_findings(run, pipeline, catalog, {"organs": organ_map}, (2.0,) * 3, hu)
        return {s.tracking_id: s.review for s in findings.segments}

    assert kidney_reviews(hu) == {
        "kidney_left": ("mean density 110 HU from its pair's (kidney right), over 40 HU",),
        "kidney_right": ("mean density 110 HU from its pair's (kidney left), over 40 HU",),
    }
    hu[organ_map == 4] = 145.0  # both enhanced, 15 HU apart
    assert kidney_reviews(hu) == {"kidney_left": (), "kidney_right": ()}
    organ_map[organ_map == 4] = 0  # one kidney: nothing to compare
    assert kidney_reviews(hu) == {"kidney_left": ()}


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.integers(0, 255), max_size=8),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_of_answers_as_isin_does(values: list[int], seed: int) -> None:
    """By comparisons (few values) or by its table (many): the same voxels either way."""
    labels = np.random.default_rng(seed).integers(0, 256, (5, 7, 9)).astype(np.uint8)
    labels.flat[: len(values)] = values  # every value present somewhere
    np.testing.assert_array_equal(one_of(labels, values), np.isin(labels, values))
