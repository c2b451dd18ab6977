"""The catalog as operators see and govern it: every model version and pipeline with its
state, and the changes of state, for the CLI and the dashboard alike.

A pipeline's state is its own (declared, or as an operator set it) held back by its models':
a pipeline whose model version is disabled cannot run, one whose model is in shadow runs in
shadow. Each change is audited under the operator's name (`store.governance_ledger`).
"""

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from appliance.domain.monitoring import ModelRow, PipelineRow
from appliance.domain.pipelines import Governance, ModelRef, Pipeline, State
from appliance.inference.backend import BackendError, InferenceBackend
from appliance.inference.catalog import Catalog, load_catalog
from appliance.store.governance_ledger import GovernanceLedger


class NotInCatalog(LookupError):
    """No such pipeline or model version in the model repository."""


class Governor:
    """Reads the catalog and the states operators gave its entries; changes those states."""

    def __init__(self, repository: Path, engine: Engine) -> None:
        self._repository = repository
        self._ledger = GovernanceLedger(engine)

    def catalog(self) -> Catalog:
        return load_catalog(self._repository)

    def governance(self) -> Governance:
        return self._ledger.current()

    def set_pipeline(self, name: str, state: State, actor: str) -> State:
        """Give pipeline `name` `state`; the state it had."""
        pipeline = self.catalog().pipelines.get(name)
        if pipeline is None:
            raise NotInCatalog(f"no pipeline {name} in the model repository")
        was = self.governance().pipelines.get(name, pipeline.state)
        self._ledger.set_pipeline(name, state, was, _now(), actor)
        return was

    def set_model(self, model: ModelRef, state: State, actor: str) -> State:
        """Give model version `model` `state`; the state it had."""
        if model not in self.catalog().models:
            raise NotInCatalog(f"no model {model} in the model repository")
        was = self.governance().model_state(model)
        self._ledger.set_model(model, state, was, _now(), actor)
        return was

    def record_import(self, model: ModelRef, state: State, detail: str, actor: str) -> None:
        """Audit a model version just imported, and give it its first state."""
        self._ledger.record_import(model, state, detail, _now(), actor)

    def models(self, backend: InferenceBackend | None = None) -> list[ModelRow]:
        """Every model version, with its state (and readiness, given a backend); a version
        whose contract does not load is listed with the reason."""
        catalog, governance = self.catalog(), self.governance()
        rows = []
        for ref, contract in sorted(catalog.models.items()):
            card = self._repository / ref.name / str(ref.version) / contract.card
            rows.append(
                ModelRow(
                    ref.name, ref.version, contract.modality, contract.source.value,
                    contract.synthetic, [label.name for label in contract.labels],
                    contract.grid_spacing_mm, list(contract.patch),
                    governance.model_state(ref).value, _ready(backend, ref),
                    card.read_text(encoding="utf-8") if card.exists() else "(no model card)",
                )
            )  # fmt: skip
        return rows + [ModelRow("(invalid)", error=problem) for problem in catalog.problems]

    def pipelines(self) -> list[PipelineRow]:
        catalog, governance = self.catalog(), self.governance()
        return [
            PipelineRow(
                pipeline.name,
                pipeline.description,
                governance.pipelines.get(pipeline.name, pipeline.state).value,
                governance.pipeline_state(pipeline).value,
                stages(pipeline),
            )
            for pipeline in catalog.pipelines.values()
        ]


def stages(pipeline: Pipeline) -> list[str]:
    """Each stage in words: `lesions: lesion_ct v1, region of organs (liver)`."""
    described = []
    for stage in pipeline.stages:
        where = (
            f"region of {stage.region.stage} ({', '.join(stage.region.labels)})"
            if stage.region
            else stage.kind.value
        )
        described.append(f"{stage.name}: {stage.model}, {where}")
    return described


def _ready(backend: InferenceBackend | None, model: ModelRef) -> bool | None:
    if backend is None:
        return None
    try:
        return backend.ready(model)
    except BackendError:
        return False


def _now() -> datetime:
    return datetime.now(UTC)
