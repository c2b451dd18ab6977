"""Routing rules replayed over the stored studies of a period (`appliance rules dry-run`):
what the current rules do with them, what a candidate set of rules would, and where the two
differ. Read only: nothing is queued, nothing changes."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import Engine

from appliance.app.catalog import Governor
from appliance.app.pipelines import pipeline_states
from appliance.config import RoutingSettings, SettingsError
from appliance.domain.pipelines import State
from appliance.domain.routing import RouteRule, SeriesFacts, route
from appliance.store.job_ledger import JobLedger

NOTHING = "(no pipeline)"


@dataclass(frozen=True)
class Change:
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    now: str
    candidate: str


@dataclass(frozen=True)
class DryRun:
    studies: int
    series: int
    changes: list[Change]


def load_rules(path: Path) -> list[RouteRule]:
    """Candidate rules from a YAML file: a list of rules, `rules:` or a settings file's
    `routing: rules:`. Raises SettingsError naming the bad field."""
    try:
        tree: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read rules file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
    if isinstance(tree, dict) and "routing" in tree:
        tree = tree["routing"]
    if isinstance(tree, list):
        tree = {"rules": tree}
    try:
        return RoutingSettings.model_validate(tree).route_rules()
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise SettingsError(f"{path}: {where}") from None


def dry_run(
    engine: Engine,
    governor: Governor,
    current: Sequence[RouteRule],
    candidate: Sequence[RouteRule],
    since: datetime,
) -> DryRun:
    """Route every series of the studies since `since` with both sets of rules, under the
    pipelines' present states."""
    states = pipeline_states(governor.catalog(), governor.governance())
    studies = JobLedger(engine).studies_since(since)
    changes = []
    count = 0
    for study_uid, series in studies:
        now, then = _by_series(series, current, states), _by_series(series, candidate, states)
        for facts in series:
            count += 1
            uid = facts.series_instance_uid
            if now.get(uid, NOTHING) != then.get(uid, NOTHING):
                changes.append(
                    Change(study_uid, uid, facts.modality, now.get(uid, NOTHING),
                           then.get(uid, NOTHING))
                )  # fmt: skip
    return DryRun(len(studies), count, changes)


def _by_series(
    series: Sequence[SeriesFacts], rules: Sequence[RouteRule], states: Callable[[str], State]
) -> dict[str, str]:
    """Per series, the pipelines that would run on it: `ct`, or `ct + shadow ct_v2`."""
    taken: dict[str, list[str]] = {}
    for matched in route(series, rules, states).routes:
        name = f"shadow {matched.rule.pipeline}" if matched.shadow else matched.rule.pipeline
        for facts in matched.series:
            taken.setdefault(facts.series_instance_uid, []).append(name)
    return {
        uid: " + ".join(sorted(names, key=lambda n: n.startswith("shadow")))
        for uid, names in taken.items()
    }
