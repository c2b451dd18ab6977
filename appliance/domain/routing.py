"""Routing: which pipeline runs on which series of a complete study.

Rules are data, never code: each names a pipeline and the facts a series must have (modality,
SOP class, body part, a series description pattern, the calling and called AE titles). Every
condition a rule leaves empty matches anything. The first matching rule whose pipeline is
enabled takes a series; a rule whose pipeline is disabled is passed over, so the next may take
it; every matching rule whose pipeline is in shadow runs beside, its results kept and never
delivered. A series no rule takes is left alone (and said so in the job's record). Urgent jobs
go to the workers first; normal ones are promoted after a bounded wait. A pipeline whose models
were not made for a series (their declared domain, `domain.applicability`) declines it with the
reason, and the next matching rule may take it.
"""

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from appliance.domain.pipelines import State


class Priority(StrEnum):
    URGENT = "urgent"
    NORMAL = "normal"


@dataclass(frozen=True)
class SeriesFacts:
    series_instance_uid: str
    modality: str
    sop_class_uids: frozenset[str]
    body_part: str
    series_description: str
    calling_ae: str
    called_ae: str


@dataclass(frozen=True)
class RouteRule:
    name: str
    pipeline: str
    priority: Priority = Priority.NORMAL
    modalities: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    description_pattern: str | None = None  # shell-style, case-insensitive: "*abdomen*"
    calling_aes: frozenset[str] = frozenset()
    called_aes: frozenset[str] = frozenset()

    def matches(self, series: SeriesFacts) -> bool:
        return (
            _any_or(self.modalities, series.modality.upper())
            and (not self.sop_classes or bool(self.sop_classes & series.sop_class_uids))
            and _any_or(self.body_parts, series.body_part.upper())
            and (
                self.description_pattern is None
                or fnmatch.fnmatch(
                    series.series_description.lower(), self.description_pattern.lower()
                )
            )
            and _any_or(self.calling_aes, series.calling_ae)
            and _any_or(self.called_aes, series.called_ae)
        )


@dataclass(frozen=True)
class Route:
    rule: RouteRule
    series: tuple[SeriesFacts, ...]
    shadow: bool = False  # results kept for review, never delivered


@dataclass(frozen=True)
class Declined:
    """A series a rule matched whose pipeline's models were not made for it."""

    rule: RouteRule
    series: SeriesFacts
    reason: str


@dataclass(frozen=True)
class Routing:
    routes: list[Route]
    declined: list[Declined]


def _any_or(allowed: frozenset[str], value: str) -> bool:
    return not allowed or value in {item.upper() for item in allowed}


def _enabled(_pipeline: str) -> State:
    return State.ENABLED


def _fits(_pipeline: str, _series: SeriesFacts) -> str | None:
    return None


def route(
    series: Sequence[SeriesFacts],
    rules: Sequence[RouteRule],
    state_of: Callable[[str], State] = _enabled,
    declines: Callable[[str, SeriesFacts], str | None] = _fits,
) -> Routing:
    """Group the series by the rules that take them, in rule order: per series the first
    matching rule whose pipeline is enabled, and every matching rule whose pipeline is in
    shadow. `state_of` gives a pipeline's state, and `declines` why a pipeline's models were
    not made for a series (None: they were); both are asked only of rules that would take it."""
    taken: dict[tuple[str, bool], list[SeriesFacts]] = {}
    declined: list[Declined] = []
    for facts in series:
        enabled_taken = False
        for rule in rules:
            if not rule.matches(facts):
                continue
            state = state_of(rule.pipeline)
            shadow = state is State.SHADOW
            if not shadow and (state is not State.ENABLED or enabled_taken):
                continue
            reason = declines(rule.pipeline, facts)
            if reason is not None:
                declined.append(Declined(rule, facts, reason))
                continue
            taken.setdefault((rule.name, shadow), []).append(facts)
            enabled_taken = enabled_taken or not shadow
    routes = [
        Route(rule, tuple(taken[(rule.name, shadow)]), shadow)
        for rule in rules
        for shadow in (False, True)
        if (rule.name, shadow) in taken
    ]
    return Routing(routes, declined)


def priority_of(routes: Sequence[Route]) -> Priority:
    """A job is urgent when any route whose results it delivers is."""
    urgent = any(r.rule.priority is Priority.URGENT for r in routes if not r.shadow)
    return Priority.URGENT if urgent else Priority.NORMAL


@dataclass(frozen=True)
class Waiting:
    """A queued job not yet handed to a worker."""

    job_id: int
    priority: Priority
    queued_at: datetime


def dispatch_order(
    waiting: Sequence[Waiting], slots: int, now: datetime, promote_after: timedelta
) -> list[Waiting]:
    """The jobs to hand to the workers' `slots` free places: urgent ones first, oldest first
    within a rank. A normal job that has waited `promote_after` ranks as urgent, so a steady
    stream of urgent studies delays normal ones by at most that much and never starves them."""

    def rank(job: Waiting) -> tuple[int, datetime, int]:
        urgent = job.priority is Priority.URGENT or now - job.queued_at >= promote_after
        return (0 if urgent else 1, job.queued_at, job.job_id)

    return sorted(waiting, key=rank)[: max(slots, 0)]
