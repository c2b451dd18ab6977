"""Pipelines as data: which models run on a series, in which stages, and what becomes of
their labels. A pipeline names its models by name and version; no code knows a model.

Stage kinds:
- `volume`: a 3D model over the whole series (the box around the body).
- `region`: a 3D model inside the region of an upstream stage's labels (a cascade). The region
  is a hard constraint: a finding mostly outside it is dropped, the rest of a finding is cut
  to it, so a lesion whose site is the liver always lies in the liver.
- `frames`: a 2D model on every frame of a cine or single-frame image.

Governance: a pipeline, or a model version, is enabled, disabled or in shadow. A shadow
pipeline runs beside the enabled one its series go to, and keeps its results for review
without delivering them.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from appliance.domain.concepts import CodedConcept

NAME = r"^[a-z][a-z0-9_]{0,63}$"


class StageKind(StrEnum):
    VOLUME = "volume"
    REGION = "region"
    FRAMES = "frames"


class Findings(StrEnum):
    """How a stage's labels become segments."""

    PER_LABEL = "per_label"  # one segment per label found (organs)
    PER_COMPONENT = "per_component"  # one per connected component, its class by majority


class Measurement(StrEnum):
    VOLUME = "volume"  # mL, volume stages
    LONGEST_AXIAL_DIAMETER = "longest_axial_diameter"  # mm, per-component findings
    AREA = "area"  # mm2 per frame, frames stages


class State(StrEnum):
    """Of a pipeline or a model version, from least to most in use."""

    DISABLED = "disabled"
    SHADOW = "shadow"
    ENABLED = "enabled"

    @property
    def verb(self) -> str:
        """The command that sets it: disable, shadow, enable."""
        return {"disabled": "disable", "shadow": "shadow", "enabled": "enable"}[self.value]


_ORDER = (State.DISABLED, State.SHADOW, State.ENABLED)


def least(*states: State) -> State:
    """The state that holds when all of `states` must agree: a pipeline runs as much as its
    least-enabled part allows."""
    return min(states, key=_ORDER.index)


class InvalidPipeline(ValueError):
    """A pipeline declaration that cannot run; the message names what is wrong."""


@dataclass(frozen=True, order=True)
class ModelRef:
    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass(frozen=True)
class Region:
    """Where a region stage looks: the voxels of `labels` of the upstream `stage`."""

    stage: str
    labels: tuple[str, ...]
    margin_mm: float = 10.0  # around the region's box, for the model's context


@dataclass(frozen=True)
class Stage:
    name: str
    kind: StageKind
    model: ModelRef
    labels: tuple[str, ...] = ()  # the labels that become segments; empty: every label
    findings: Findings = Findings.PER_LABEL
    measurements: tuple[Measurement, ...] = ()
    region: Region | None = None
    # Where the findings lie, for the SR. A region stage's findings lie in the region label
    # that holds most of each; another stage may name a site.
    finding_site: CodedConcept | None = None


_ALLOWED = {
    StageKind.VOLUME: ({Findings.PER_LABEL, Findings.PER_COMPONENT},
                       {Measurement.VOLUME, Measurement.LONGEST_AXIAL_DIAMETER}),
    StageKind.REGION: ({Findings.PER_LABEL, Findings.PER_COMPONENT},
                       {Measurement.VOLUME, Measurement.LONGEST_AXIAL_DIAMETER}),
    StageKind.FRAMES: ({Findings.PER_LABEL}, {Measurement.AREA}),
}  # fmt: skip


@dataclass(frozen=True)
class Pipeline:
    name: str
    description: str
    stages: tuple[Stage, ...]
    state: State = State.ENABLED  # before any operator changes it
    models: tuple[ModelRef, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(sorted({s.model for s in self.stages})))
        check(self)

    @property
    def frames(self) -> bool:
        """Whether the pipeline reads cines and frames (else CT volumes)."""
        return self.stages[0].kind is StageKind.FRAMES

    def stage(self, name: str) -> Stage:
        return next(stage for stage in self.stages if stage.name == name)


def check(pipeline: Pipeline) -> None:
    """What the stages must agree on among themselves; the catalog checks them against the
    models' contracts."""
    where = f"pipeline {pipeline.name}"
    for name in (pipeline.name, *(stage.name for stage in pipeline.stages)):
        if not re.fullmatch(NAME, name):
            raise InvalidPipeline(f"{where}: {name!r} is not a name (a-z, 0-9, _)")
    if not pipeline.stages:
        raise InvalidPipeline(f"{where}: no stages")
    seen: list[str] = []
    for stage in pipeline.stages:
        at = f"{where}, stage {stage.name}"
        if stage.name in seen:
            raise InvalidPipeline(f"{at}: a second stage of that name")
        findings, measurements = _ALLOWED[stage.kind]
        if stage.findings not in findings:
            raise InvalidPipeline(f"{at}: a {stage.kind} stage cannot find {stage.findings}")
        wrong = [m.value for m in stage.measurements if m not in measurements]
        if wrong:
            raise InvalidPipeline(f"{at}: a {stage.kind} stage cannot measure {', '.join(wrong)}")
        if (
            Measurement.LONGEST_AXIAL_DIAMETER in stage.measurements
            and stage.findings is not Findings.PER_COMPONENT
        ):
            raise InvalidPipeline(f"{at}: a longest diameter is measured per component")
        if stage.kind is StageKind.REGION:
            if stage.region is None:
                raise InvalidPipeline(f"{at}: a region stage names its region")
            if stage.region.stage not in seen:
                raise InvalidPipeline(
                    f"{at}: its region comes from stage {stage.region.stage}, which does not "
                    "run before it"
                )
            if not stage.region.labels:
                raise InvalidPipeline(f"{at}: its region names no labels")
        elif stage.region is not None:
            raise InvalidPipeline(f"{at}: only a region stage has a region")
        seen.append(stage.name)
    kinds = {stage.kind for stage in pipeline.stages}
    if StageKind.FRAMES in kinds and len(pipeline.stages) > 1:
        raise InvalidPipeline(f"{where}: a frames stage runs alone")
    if pipeline.stages[0].kind is StageKind.REGION:
        raise InvalidPipeline(f"{where}: the first stage cannot be a region stage")


@dataclass(frozen=True)
class Governance:
    """The states operators gave pipelines and model versions (the database holds them)."""

    pipelines: Mapping[str, State] = field(default_factory=dict)
    models: Mapping[ModelRef, State] = field(default_factory=dict)

    def model_state(self, model: ModelRef) -> State:
        return self.models.get(model, State.ENABLED)

    def pipeline_state(self, pipeline: Pipeline) -> State:
        """What the pipeline may do: its own state, held back by its least-enabled model."""
        own = self.pipelines.get(pipeline.name, pipeline.state)
        return least(own, *(self.model_state(model) for model in pipeline.models))
