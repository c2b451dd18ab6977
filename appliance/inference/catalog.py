"""The catalog: every model version in the repository and every pipeline declared beside them.

Pipelines are files at the top of the repository, `<name>.pipeline.yaml` (Triton reads only
its folders, so they sit beside the models without disturbing it). Loading checks each one
against the contracts of the models it names, and names what is wrong: a model or version not
in the repository, a label the model does not have, a region from labels its stage lacks, a
2D model in a volume stage or a 3D model in a frames stage, models of different modalities.
A broken contract or pipeline file is listed as a problem; the rest of the catalog serves.
"""

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from appliance.domain.pipelines import InvalidPipeline, ModelRef, Pipeline, StageKind
from appliance.inference.contract import ContractError, ModelContract, load_contract
from appliance.inference.repository import version_directories

PIPELINE_SUFFIX = ".pipeline.yaml"
_PIPELINE = TypeAdapter(Pipeline)


@dataclass(frozen=True)
class Catalog:
    models: dict[ModelRef, ModelContract]
    pipelines: dict[str, Pipeline]
    problems: list[str] = field(default_factory=list)  # entries that could not be loaded

    def contract(self, model: ModelRef) -> ModelContract:
        return self.models[model]


def load_catalog(repository: Path) -> Catalog:
    models: dict[ModelRef, ModelContract] = {}
    problems = []
    for directory in version_directories(repository):
        try:
            contract = load_contract(directory)
        except ContractError as exc:
            problems.append(str(exc))
            continue
        if (contract.name, str(contract.version)) != (directory.parent.name, directory.name):
            problems.append(f"{directory}: its contract says {contract.ref}")
            continue
        models[contract.ref] = contract
    pipelines = {}
    paths = sorted(repository.glob(f"*{PIPELINE_SUFFIX}")) if repository.is_dir() else []
    for path in paths:
        try:
            pipeline = load_pipeline(path, models)
        except InvalidPipeline as exc:
            problems.append(str(exc))
            continue
        if pipeline.name in pipelines:
            problems.append(f"{path}: a second pipeline named {pipeline.name}")
            continue
        pipelines[pipeline.name] = pipeline
    return Catalog(models, pipelines, problems)


def load_pipeline(path: Path, models: dict[ModelRef, ModelContract]) -> Pipeline:
    """One pipeline file, checked against `models`. Raises InvalidPipeline."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        pipeline = _PIPELINE.validate_python(tree)
    except OSError as exc:
        raise InvalidPipeline(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidPipeline(f"{path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidPipeline(f"{path}: {errors}") from exc
    if path.name != f"{pipeline.name}{PIPELINE_SUFFIX}":
        raise InvalidPipeline(f"{path}: declares pipeline {pipeline.name}")
    check_against(pipeline, models)
    return pipeline


def check_against(pipeline: Pipeline, models: dict[ModelRef, ModelContract]) -> None:
    """What the stages ask of their models' contracts."""
    modalities = set()
    for stage in pipeline.stages:
        at = f"pipeline {pipeline.name}, stage {stage.name}"
        contract = models.get(stage.model)
        if contract is None:
            raise InvalidPipeline(f"{at}: model {stage.model} is not in the repository")
        modalities.add(contract.modality)
        names = {label.name for label in contract.labels}
        unknown = sorted(set(stage.labels) - names)
        if unknown:
            raise InvalidPipeline(f"{at}: {stage.model} has no label {', '.join(unknown)}")
        dimensions = 2 if stage.kind is StageKind.FRAMES else 3
        if len(contract.patch) != dimensions:
            raise InvalidPipeline(
                f"{at}: a {stage.kind} stage runs a {dimensions}D model; {stage.model} is "
                f"{len(contract.patch)}D"
            )
        whole = contract.fixed_grid is not None
        if dimensions == 3 and contract.grid_spacing_mm is None and not whole:
            raise InvalidPipeline(f"{at}: {stage.model} names no spacing to resample to")
        if whole and stage.kind is not StageKind.VOLUME:
            raise InvalidPipeline(f"{at}: {stage.model} reads whole volumes: a volume stage")
        locator = contract.fixed_grid.locator if contract.fixed_grid else None
        if locator is not None:
            found = models.get(locator.ref)
            if found is None or found.patch != locator.patch:
                raise InvalidPipeline(
                    f"{at}: {stage.model}'s locator {locator.ref} is not in the repository "
                    f"with patch {locator.patch}"
                )
        if stage.kind is StageKind.FRAMES and len(contract.labels) != 1:
            raise InvalidPipeline(f"{at}: a frames stage runs a model of one structure")
        if stage.region is not None:
            upstream = models[pipeline.stage(stage.region.stage).model]
            missing = sorted(set(stage.region.labels) - {label.name for label in upstream.labels})
            if missing:
                raise InvalidPipeline(
                    f"{at}: its region's stage {stage.region.stage} has no label "
                    f"{', '.join(missing)}"
                )
    if len(modalities) > 1:
        raise InvalidPipeline(
            f"pipeline {pipeline.name}: its models read {', '.join(sorted(modalities))}"
        )
