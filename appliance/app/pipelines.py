"""Pipelines: a series in, findings out, as the pipeline's declaration says.

Wiring between two edges: `inference` turns pixels into label maps with the models'
contracts, and `results` encodes findings (numbered, coded segments and their measurements)
as SEG and SR. Neither knows the other, and nothing here knows a particular model: the stages,
their models, which labels become segments, what is measured and where each finding lies all
come from the pipeline (`domain.pipelines`) and the models' contracts. So do the bounds each
finding is checked against (`domain.plausibility`): a finding outside them, or from a series
whose facts could not be checked against the models' domain, is flagged for review or
withheld, as the site's setting says.
"""

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.dataset import Dataset
from scipy import ndimage

from appliance.config import InferenceSettings
from appliance.domain.colours import display_colour
from appliance.domain.concepts import CodedConcept
from appliance.domain.findings import (
    Algorithm,
    AxialLine,
    FrameArea,
    RunIdentity,
    Search,
    Segment,
    VolumeMeasurement,
    Withheld,
)
from appliance.domain.pipelines import (
    Findings,
    Governance,
    Measurement,
    ModelRef,
    Pipeline,
    Stage,
    State,
)
from appliance.domain.plausibility import Handling, Observed, Plausible, review_reasons
from appliance.inference.backend import BackendError, InferenceBackend, OnnxRuntimeBackend
from appliance.inference.catalog import Catalog
from appliance.inference.contract import Label, ModelContract
from appliance.inference.ct import (
    CTVolume,
    confine_to_filled,
    load_series,
    segment_ct,
    segment_in_region,
    segment_mirrored_around,
)
from appliance.inference.masks import bounding_box, filled, grown
from appliance.inference.measurements import number_lesions, outline
from appliance.inference.ultrasound import decode_cine, segment_cine
from appliance.results.findings import CTFindings, UltrasoundFindings

LOG = logging.getLogger(__name__)

# Where a finding lies, from its box in the volume and its voxels within that box.
SiteOf = Callable[[tuple[slice, ...], NDArray[np.bool_]], CodedConcept | None]
# How far around a finding, in voxels, its mirrored second opinion is taken and compared.
AGREEMENT_REACH = 2
# Up to this many values, `one_of` compares; more take its lookup table.
FEW_VALUES = 3


def make_backend(settings: InferenceSettings) -> InferenceBackend:
    """ONNX Runtime in this process (embedded), or a Triton server (production)."""
    if settings.backend == "triton":
        from appliance.inference.triton import TritonBackend  # the [triton] extra only

        return TritonBackend(settings.triton_url, settings.triton_protocol)
    return OnnxRuntimeBackend(settings.repository, threads=settings.threads)


def models_in_service(catalog: Catalog, governance: Governance) -> list[ModelRef]:
    """Every model version that an enabled or shadow pipeline runs, in order."""
    return sorted(
        {
            model
            for pipeline in catalog.pipelines.values()
            if governance.pipeline_state(pipeline) is not State.DISABLED
            for model in pipeline.models
        }
    )


def warm_models(backend: InferenceBackend, catalog: Catalog, models: Iterable[ModelRef]) -> int:
    """Run each of `models` once on zeros (a batch of one), so that a first study does not
    pay for loading them: a model's first run loads it and sets up its memory (on a GPU
    server, its engine's too, which can take seconds). A model that fails here is left to the
    jobs that need it, which record why. How many ran."""
    warmed = 0
    for model in models:
        shape = catalog.contract(model).input.shape[1:]
        try:
            backend.infer(model, np.zeros((1, *shape), dtype=np.float32))
        except BackendError as exc:
            LOG.warning("model %s not warmed: %s", model, exc)
            continue
        warmed += 1
    return warmed


class UnknownPipeline(ValueError):
    """A routing rule names a pipeline the catalog does not hold."""


def pipeline_states(catalog: Catalog, governance: Governance) -> Callable[[str], State]:
    """A pipeline's state by name, for routing: its own held back by its models'."""

    def state(name: str) -> State:
        pipeline = catalog.pipelines.get(name)
        if pipeline is None:
            problems = "; ".join(catalog.problems) or "no such file"
            raise UnknownPipeline(f"no pipeline {name} in the model repository ({problems})")
        return governance.pipeline_state(pipeline)

    return state


@dataclass(frozen=True)
class VolumeRun:
    volume: CTVolume
    findings: CTFindings
    stages: dict[str, NDArray[np.uint8]]  # each stage's label map (contract values), for review


@dataclass(frozen=True)
class FramesRun:
    source: Dataset  # the cine's data set without pixel data
    findings: UltrasoundFindings
    frames: NDArray[np.uint8]  # its luminance frames, for the findings preview


def algorithm(contract: ModelContract) -> Algorithm:
    limits = contract.domain.describe() if contract.domain else ""
    return Algorithm(contract.name, contract.version, contract.synthetic, limits)


def identity(pipeline: Pipeline, catalog: Catalog, source_uids: Sequence[str]) -> RunIdentity:
    """What every result UID of a run derives from: the pipeline, its models in stage order,
    the source instances."""
    models = tuple(algorithm(catalog.contract(stage.model)) for stage in pipeline.stages)
    return RunIdentity(pipeline.name, models, tuple(source_uids))


def run_volume(
    pipeline: Pipeline,
    catalog: Catalog,
    paths: Sequence[Path],
    backend: InferenceBackend,
    handling: Handling = Handling.FLAG,
    unchecked: Sequence[str] = (),
) -> VolumeRun:
    """Every stage over one CT series, in order; a region stage looks only inside the voxels
    of its upstream stage's labels, and keeps only what lies there. `unchecked` are the facts
    of the models' domain the series did not state: every finding is for review."""
    volume = load_series(paths)
    maps: dict[str, NDArray[np.uint8]] = {}
    mirrored: dict[str, NDArray[np.uint8]] = {}
    for stage in pipeline.stages:
        contract = catalog.contract(stage.model)
        if stage.region is None:
            maps[stage.name] = segment_ct(volume, backend, contract)
            inside = None
        else:  # what lies in its region, the earlier stages' maps giving the region
            region = region_mask(pipeline, catalog, stage, maps)
            inside = filled(region)
            labels = segment_in_region(volume, region, backend, contract, stage.region.margin_mm)
            maps[stage.name] = confine_to_filled(labels, inside)
        if _checks_agreement(catalog, stage):
            second = segment_mirrored_around(
                maps[stage.name], volume, backend, contract, AGREEMENT_REACH
            )
            if inside is not None:  # held to the region, as the first pass was
                second = confine_to_filled(second, inside)
            mirrored[stage.name] = second
    run = identity(pipeline, catalog, volume.geometry.sop_instance_uids)
    findings = volume_findings(
        run, pipeline, catalog, maps, volume.geometry.spacing, volume.hu, unchecked, mirrored
    )
    if handling is Handling.WITHHOLD:
        findings = without_review(findings)
    return VolumeRun(volume, findings, maps)


def _checks_agreement(catalog: Catalog, stage: Stage) -> bool:
    """Whether any label of the stage asks for a mirrored second pass to agree with it."""
    return any(
        label.plausible is not None and label.plausible.min_agreement is not None
        for label in catalog.contract(stage.model).labels
    )


def region_mask(
    pipeline: Pipeline, catalog: Catalog, stage: Stage, maps: dict[str, NDArray[np.uint8]]
) -> NDArray[np.bool_]:
    """The voxels of a region stage's region: its upstream stage's region labels."""
    assert stage.region is not None
    return one_of(maps[stage.region.stage], _region_values(pipeline, catalog, stage))


def _region_values(pipeline: Pipeline, catalog: Catalog, stage: Stage) -> tuple[int, ...]:
    """The values of a region stage's region labels in its upstream stage's map."""
    assert stage.region is not None
    upstream = catalog.contract(pipeline.stage(stage.region.stage).model)
    return tuple(label.value for label in upstream.labels if label.name in stage.region.labels)


@dataclass(frozen=True)
class Host:
    """Where a region stage's finding lies: its upstream stage's map, the region's values in
    it, and the stage's first segment number (those from it on are its and later stages')."""

    map: NDArray[np.uint8]
    values: tuple[int, ...]
    first: int


def one_of(labels: NDArray[np.uint8], values: Iterable[int]) -> NDArray[np.bool_]:
    """Where `labels` holds any of `values`, as `np.isin` answers: compared value by value
    where there are few (0.03 s each on a whole CT), else by a lookup table (0.11 s)."""
    wanted = sorted(set(values))
    if len(wanted) > FEW_VALUES:
        table = np.zeros(256, dtype=bool)
        table[wanted] = True
        return table[labels]
    where = np.zeros(labels.shape, dtype=bool)
    for value in wanted:
        where |= labels == value
    return where


def _one_of_in_box(labels: NDArray[np.uint8], values: Iterable[int]) -> NDArray[np.bool_]:
    """`one_of` for a map that is empty but for a few findings: worked out in the box around
    them, the rest of the answer left as the untouched zeros it is allocated as."""
    where = np.zeros(labels.shape, dtype=bool)
    box = bounding_box(labels, (0,) * labels.ndim)
    if box is not None:
        where[box] = one_of(labels[box], values)
    return where


def volume_findings(
    run: RunIdentity,
    pipeline: Pipeline,
    catalog: Catalog,
    maps: dict[str, NDArray[np.uint8]],
    spacing: tuple[float, float, float],
    hu: NDArray[np.floating] | None = None,
    unchecked: Sequence[str] = (),
    mirrored: dict[str, NDArray[np.uint8]] | None = None,
) -> CTFindings:
    """Segments for each stage's findings, later stages painted over earlier ones (segments
    do not overlap, so one map serves LABELMAP and BINARY alike), and their measurements;
    volumes are counted once everything is painted, since a voxel has one segment. Each
    segment is then checked against its label's plausible bounds (the densities from `hu`,
    the agreement from the `mirrored` second passes of the stages that ask for one)."""
    labels = np.zeros(next(iter(maps.values())).shape, dtype=np.uint8)
    segments: list[Segment] = []
    diameters: dict[int, tuple[float, AxialLine]] = {}
    measured: list[tuple[int, Stage]] = []
    coded: dict[int, Label] = {}
    seconds: dict[int, NDArray[np.bool_]] = {}  # per segment, its kind in a mirrored pass
    hosts: dict[int, Host] = {}  # per lesion of a region stage, the region it lies in
    for stage in pipeline.stages:
        contract = catalog.contract(stage.model)
        wanted = [
            label for label in contract.labels if label.name in (stage.labels or [label.name])
        ]
        site = _site(pipeline, catalog, stage, maps)
        if stage.findings is Findings.PER_LABEL:
            label_boxes = ndimage.find_objects(maps[stage.name])
            for label in wanted:
                box = label_boxes[label.value - 1] if label.value <= len(label_boxes) else None
                if box is None:
                    continue
                where = maps[stage.name][box] == label.value
                number = len(segments) + 1
                labels[box][where] = number
                segments.append(
                    Segment(
                        number, label.name.replace("_", " "), label.category, label.type,
                        label.name, run.uid("segment", label.name), algorithm(contract),
                        site(box, where), stage.name, label.type_modifier,
                        display_colour(label.colour, label.type, number),
                    )
                )  # fmt: skip
                coded[number] = label
                measured.append((number, stage))
                if mirrored and stage.name in mirrored:
                    seconds[number] = mirrored[stage.name] == label.value
            continue
        classes = maps[stage.name]
        kinds = {label.value: label for label in wanted}
        host = (
            Host(
                maps[stage.region.stage], _region_values(pipeline, catalog, stage),
                len(segments) + 1,
            )
            if stage.region
            else None
        )  # fmt: skip
        # A lesion map is empty but for its findings: they are numbered in the box around
        # them, not over the whole CT.
        area = bounding_box(classes, (0,) * classes.ndim)
        if area is None:
            continue
        corner = [part.start for part in area]
        numbered, found = number_lesions(one_of(classes[area], kinds), spacing, at=corner)
        second = (
            _one_of_in_box(mirrored[stage.name], kinds)
            if mirrored and stage.name in mirrored
            else None
        )
        lesion_boxes = ndimage.find_objects(numbered)
        for lesion in found:
            inner = lesion_boxes[lesion.tracking_number - 1]
            assert inner is not None  # every lesion found has its voxels
            where = numbered[inner] == lesion.tracking_number
            box = tuple(
                slice(part.start + start, part.stop + start)
                for part, start in zip(inner, corner, strict=True)
            )
            number = len(segments) + 1
            labels[box][where] = number
            name = f"{stage.name} {lesion.tracking_number}"
            kind = _majority(classes[box], where, kinds)
            segments.append(
                Segment(
                    number, name, kind.category, kind.type, name,
                    run.uid(stage.name, str(lesion.tracking_number)), algorithm(contract),
                    site(box, where), stage.name, kind.type_modifier,
                    display_colour(kind.colour, kind.type, number),
                )
            )  # fmt: skip
            (row0, column0), (row1, column1) = lesion.diameter_ends
            diameters[number] = (
                lesion.longest_axial_diameter_mm,
                AxialLine(
                    lesion.slice_of_longest_diameter,
                    ((column0 + 0.5, row0 + 0.5), (column1 + 0.5, row1 + 0.5)),
                ),
            )
            coded[number] = kind
            measured.append((number, stage))
            if host is not None:
                hosts[number] = host
            if second is not None:
                seconds[number] = second
    voxel_ml = float(np.prod(spacing)) / 1000.0
    boxes = ndimage.find_objects(labels, len(segments))
    counts = _voxel_counts(labels, boxes)
    doubts = _doubts(unchecked)
    seen = [
        _observed(
            labels, segment.number, boxes[index], counts, voxel_ml, hu,
            coded[segment.number].plausible, seconds.get(segment.number),
            hosts.get(segment.number),
            diameters[segment.number][0] if segment.number in diameters else None,
        )
        for index, segment in enumerate(segments)
    ]  # fmt: skip
    for index, segment in enumerate(segments):
        bounds = coded[segment.number].plausible
        observed = _with_pair(segments, seen, index, bounds)
        segments[index] = replace(segment, review=(*doubts, *review_reasons(bounds, observed)))
    measurements = tuple(
        VolumeMeasurement(number, float(counts[number]) * voxel_ml, *diameters[number])
        if Measurement.LONGEST_AXIAL_DIAMETER in stage.measurements
        else VolumeMeasurement(
            number,
            float(counts[number]) * voxel_ml,
            outline=_largest_section(labels, number, boxes[number - 1]),
        )
        for number, stage in measured
        if Measurement.VOLUME in stage.measurements
    )
    searches = tuple(
        Search(
            stage.name,
            _search_site(pipeline, catalog, stage),
            catalog.contract(stage.model).sensitivity,
        )
        for stage in pipeline.stages
        if stage.findings is Findings.PER_COMPONENT
    )
    return CTFindings(run, labels, tuple(segments), measurements, searches)


def _voxel_counts(
    labels: NDArray[np.uint8], boxes: list[tuple[slice, ...] | None]
) -> NDArray[np.intp]:
    """Each segment's voxels (index 0 unused), counted inside its box: `np.bincount` over a
    whole CT's label map casts it to 64-bit first (0.9 s for 512 x 512 x 300)."""
    counts = np.zeros(len(boxes) + 1, dtype=np.intp)
    for number, box in enumerate(boxes, start=1):
        if box is not None:
            counts[number] = np.count_nonzero(labels[box] == number)
    return counts


def _largest_section(
    labels: NDArray[np.uint8], number: int, box: tuple[slice, ...] | None
) -> AxialLine | None:
    """Segment `number`'s outline on the slice where its cross-section is largest, for a
    viewer to draw (None where a later stage painted it over)."""
    if box is None:
        return None
    where = labels[box] == number
    index = int(where.sum(axis=(1, 2)).argmax())
    top, left = box[1].start, box[2].start
    points = outline(where[index])
    return AxialLine(box[0].start + index, tuple((x + left, y + top) for x, y in points))


def _doubts(unchecked: Sequence[str]) -> tuple[str, ...]:
    """The review reasons every finding of a series carries whose facts the models' domain
    asks for but the series does not state."""
    return tuple(f"domain not established: {why}" for why in unchecked)


def _observed(
    labels: NDArray[np.uint8],
    number: int,
    box: tuple[slice, ...] | None,
    counts: NDArray[np.intp],
    voxel_ml: float,
    hu: NDArray[np.floating] | None,
    bounds: Plausible | None,
    second: NDArray[np.bool_] | None = None,
    host: Host | None = None,
    diameter_mm: float | None = None,
) -> Observed:
    """What the plausibility check of one painted segment reads, within its bounding box;
    densities, parts and contrast only where its bounds name them (the contrast against the
    `host` region's tissue around it, where it has one), and its agreement with
    `second` (the same kind found by a mirrored pass) within a voxel or two of that box;
    a lesion's `diameter_mm` as measured."""
    volume_ml = float(counts[number]) * voxel_ml
    if bounds is None or box is None:  # no bounds, or painted over by a later stage
        return Observed(volume_ml=volume_ml, diameter_mm=diameter_mm)
    where = labels[box] == number
    parts = None
    if bounds.max_parts is not None:
        numbered, _ = ndimage.label(where, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(numbered.ravel())[1:]
        parts = int((sizes >= 0.1 * sizes.sum()).sum())
    return Observed(
        volume_ml=volume_ml,
        mean_hu=(
            float(hu[box][where].mean())
            if hu is not None and (bounds.mean_hu or bounds.pair)
            else None
        ),
        parts=parts,
        cut_by_field_of_view=box[0].start == 0 or box[0].stop == labels.shape[0],
        agreement=_agreement(labels, number, box, second) if second is not None else None,
        contrast_hu=(
            contrast(labels, number, box, hu, host)
            if hu is not None and bounds.min_contrast_hu is not None
            else None
        ),
        diameter_mm=diameter_mm,
    )


def _with_pair(
    segments: Sequence[Segment], seen: Sequence[Observed], index: int, bounds: Plausible | None
) -> Observed:
    """What was seen of segment `index`, with its mean density against its pair's (the
    segment of the label its bounds name as its pair, from the same stage), where both have
    one."""
    mine = seen[index].mean_hu
    if bounds is None or bounds.pair is None or mine is None:
        return seen[index]
    stage = segments[index].stage
    for other, observed in zip(segments, seen, strict=True):
        if other.stage == stage and other.tracking_id == bounds.pair:
            theirs = observed.mean_hu
            if theirs is not None:
                return replace(seen[index], pair_difference_hu=mine - theirs)
    return seen[index]


CONTRAST_RING = 3  # voxels around a segment whose density it is compared with


def contrast(
    labels: NDArray[np.uint8],
    number: int,
    box: tuple[slice, ...],
    hu: NDArray[np.floating],
    host: Host | None,
) -> float | None:
    """The mean density within `CONTRAST_RING` voxels around a segment less the segment's
    own; with a `host`, only of its region's voxels that no segment of its stage or a later
    one covers. None where nothing is around it."""
    around = grown(box, (CONTRAST_RING,) * labels.ndim, labels.shape)
    painted = labels[around]
    where = painted == number
    ring = ndimage.binary_dilation(where, iterations=CONTRAST_RING) & ~where
    if host is not None:
        ring &= one_of(host.map[around], host.values) & (painted < host.first)
    if not ring.any():
        return None
    values = hu[around]
    return float(values[ring].mean() - values[where].mean())


def _agreement(
    labels: NDArray[np.uint8], number: int, box: tuple[slice, ...], second: NDArray[np.bool_]
) -> float:
    """Dice between a segment and `second` around it (its box grown by `AGREEMENT_REACH`)."""
    around = grown(box, (AGREEMENT_REACH,) * labels.ndim, labels.shape)
    where, other = labels[around] == number, second[around]
    return 2 * float((where & other).sum()) / max(float(where.sum() + other.sum()), 1.0)


def without_review(findings: CTFindings) -> CTFindings:
    """The findings with every low-confidence segment withheld: the rest renumbered from 1,
    their voxels and measurements kept; the withheld ones named, with their reasons."""
    kept = [segment for segment in findings.segments if not segment.review]
    if len(kept) == len(findings.segments):
        return findings
    renumber = np.zeros(len(findings.segments) + 1, dtype=np.uint8)
    for new, segment in enumerate(kept, start=1):
        renumber[segment.number] = new
    return replace(
        findings,
        labels=renumber[findings.labels],
        segments=tuple(replace(segment, number=int(renumber[segment.number])) for segment in kept),
        measurements=tuple(
            replace(measured, segment=int(renumber[measured.segment]))
            for measured in findings.measurements
            if renumber[measured.segment]
        ),
        withheld=findings.withheld
        + tuple(
            Withheld(segment.label, segment.review)
            for segment in findings.segments
            if segment.review
        ),
    )


def _search_site(pipeline: Pipeline, catalog: Catalog, stage: Stage) -> CodedConcept | None:
    """Where a search for separate findings looked: its declared site, else its region when
    that is one label."""
    if stage.finding_site is not None or stage.region is None:
        return stage.finding_site
    upstream = catalog.contract(pipeline.stage(stage.region.stage).model)
    sites = [label.type for label in upstream.labels if label.name in stage.region.labels]
    return sites[0] if len(sites) == 1 else None


def _majority(
    classes: NDArray[np.uint8], where: NDArray[np.bool_], kinds: dict[int, Label]
) -> Label:
    """The label most of a finding's voxels have."""
    values, counts = np.unique(classes[where], return_counts=True)
    return kinds[int(values[counts.argmax()])]


def _site(
    pipeline: Pipeline, catalog: Catalog, stage: Stage, maps: dict[str, NDArray[np.uint8]]
) -> SiteOf:
    """Where a stage's findings lie: its declared site, or for a region stage the region
    label holding most of each finding (the region's labels cover every finding there)."""
    if stage.region is None:
        return lambda box, where: stage.finding_site
    upstream = catalog.contract(pipeline.stage(stage.region.stage).model)
    regions = {label.value: label for label in upstream.labels if label.name in stage.region.labels}
    around = maps[stage.region.stage]

    def inside(box: tuple[slice, ...], where: NDArray[np.bool_]) -> CodedConcept | None:
        if stage.finding_site is not None:
            return stage.finding_site
        values, counts = np.unique(around[box][where], return_counts=True)
        ranked = [int(v) for _, v in sorted(zip(-counts, values, strict=True)) if v in regions]
        return regions[ranked[0]].type if ranked else next(iter(regions.values())).type

    return inside


def run_frames(
    pipeline: Pipeline,
    catalog: Catalog,
    path: Path,
    backend: InferenceBackend,
    handling: Handling = Handling.FLAG,
    unchecked: Sequence[str] = (),
) -> FramesRun:
    """The frames stage over one cine or single-frame image. Each frame's outline is checked
    against its label's bounds (share of the frame, the model's confidence); frames the model
    is confident lack the structure are named, so the report can say so per frame."""
    (stage,) = pipeline.stages
    contract = catalog.contract(stage.model)
    source = dcmread(path, stop_before_pixels=True)
    cine = decode_cine(path)
    frames, masks = segment_cine(cine, backend, contract)
    (label,) = contract.labels  # the catalog lets a frames stage run one structure
    run = identity(pipeline, catalog, (str(source.SOPInstanceUID),))
    segment = Segment(
        1, label.name.replace("_", " "), label.category, label.type, label.name,
        run.uid("segment", label.name), algorithm(contract), stage.finding_site,
        type_modifier=label.type_modifier, colour=display_colour(label.colour, label.type, 1),
    )  # fmt: skip
    doubts = _doubts(unchecked)
    segment = replace(segment, review=doubts)
    present, withheld = [], []
    for frame in frames:
        if not frame.present:
            continue
        seen = Observed(area_fraction=frame.area_fraction, confidence=frame.confidence)
        review = (*doubts, *review_reasons(label.plausible, seen))
        area = FrameArea(
            frame.index + 1, frame.area_mm2, frame.area_px, review, outline(masks[frame.index])
        )
        if review and handling is Handling.WITHHOLD:
            masks[frame.index] = False
            withheld.append(Withheld(f"{segment.label} frame {area.frame}", review))
        else:
            present.append(area)
    absent = () if doubts else tuple(frame.index + 1 for frame in frames if frame.absent)
    findings = UltrasoundFindings(run, masks, segment, tuple(present), absent, tuple(withheld))
    return FramesRun(source, findings, cine.frames)
