"""Routing rules: declarative matching, first rule wins, urgent beats normal."""

from datetime import UTC, datetime, timedelta

from appliance.domain.pipelines import State
from appliance.domain.routing import (
    Priority,
    RouteRule,
    SeriesFacts,
    Waiting,
    dispatch_order,
    priority_of,
    route,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def facts(
    uid: str, modality: str, sop: str, body: str = "", description: str = "", calling: str = "PACS"
) -> SeriesFacts:
    return SeriesFacts(uid, modality, frozenset({sop}), body, description, calling, "APPLIANCE")


RULES = [
    RouteRule("stroke", "ct", Priority.URGENT, frozenset({"CT"}), description_pattern="*stroke*"),
    RouteRule("abdomen", "ct", modalities=frozenset({"CT"}), body_parts=frozenset({"abdomen"})),
    RouteRule(
        "echo", "us", sop_classes=frozenset({US_MULTIFRAME}), calling_aes=frozenset({"ECHO_CART"})
    ),
]


def test_first_matching_rule_takes_each_series() -> None:
    series = [
        facts("1", "CT", CT, "ABDOMEN", "Abdomen 1.5 mm"),
        facts("2", "CT", CT, "HEAD", "CODE STROKE head"),
        facts("3", "CT", CT, "ABDOMEN", "STROKE protocol, abdomen too"),
        facts("4", "US", US_MULTIFRAME, calling="ECHO_CART"),
        facts("5", "US", US_MULTIFRAME, calling="OTHER"),  # wrong sender: no rule
        facts("6", "MR", "1.2.840.10008.5.1.4.1.1.4", "ABDOMEN"),  # wrong modality
    ]
    routes = route(series, RULES).routes
    assert [(r.rule.name, [s.series_instance_uid for s in r.series]) for r in routes] == [
        ("stroke", ["2", "3"]),
        ("abdomen", ["1"]),
        ("echo", ["4"]),
    ]
    assert priority_of(routes) is Priority.URGENT
    assert priority_of(routes[1:]) is Priority.NORMAL
    assert route([series[5]], RULES).routes == []


def test_a_pipeline_declines_what_its_models_were_not_made_for_and_the_next_rule_may_take_it() -> (
    None
):
    rules = [
        RouteRule("cyst", "us", modalities=frozenset({"US"})),
        RouteRule("echo", "us_echo", modalities=frozenset({"US"})),
        RouteRule("trial", "us_trial", modalities=frozenset({"US"})),
    ]
    states = {"us": State.ENABLED, "us_echo": State.ENABLED, "us_trial": State.SHADOW}
    asked: list[str] = []

    def declines(pipeline: str, series: SeriesFacts) -> str | None:
        asked.append(pipeline)
        return "image type EPICARDIAL" if pipeline == "us" else None

    routing = route([facts("1", "US", US_MULTIFRAME)], rules, states.__getitem__, declines)
    assert [(r.rule.name, r.shadow) for r in routing.routes] == [("echo", False), ("trial", True)]
    assert [(d.rule.name, d.reason) for d in routing.declined] == [
        ("cyst", "image type EPICARDIAL")
    ]
    assert asked == ["us", "us_echo", "us_trial"]
    states["us_echo"] = State.DISABLED  # a disabled pipeline is not asked
    asked.clear()
    routing = route([facts("1", "US", US_MULTIFRAME)], rules, states.__getitem__, declines)
    assert [r.rule.name for r in routing.routes] == ["trial"]
    assert asked == ["us", "us_trial"]


def test_empty_conditions_match_anything_and_case_does_not_matter() -> None:
    anything = RouteRule("all", "ct")
    assert anything.matches(facts("1", "ct", CT, "abdomen"))
    assert RULES[1].matches(facts("1", "ct", CT, "Abdomen"))


def test_urgent_jobs_go_first_and_a_long_wait_promotes_a_normal_one() -> None:
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    promote = timedelta(minutes=10)
    waiting = [
        Waiting(1, Priority.NORMAL, now - timedelta(minutes=3)),
        Waiting(2, Priority.NORMAL, now - timedelta(minutes=2)),
        Waiting(3, Priority.URGENT, now - timedelta(minutes=1)),
        Waiting(4, Priority.URGENT, now - timedelta(seconds=5)),
    ]
    assert [j.job_id for j in dispatch_order(waiting, 3, now, promote)] == [3, 4, 1]
    assert dispatch_order(waiting, 0, now, promote) == []
    assert dispatch_order(waiting, -2, now, promote) == []

    starved = Waiting(5, Priority.NORMAL, now - timedelta(minutes=11))
    order = dispatch_order([*waiting, starved], 2, now, promote)
    assert [j.job_id for j in order] == [5, 3]  # waited longest: ahead of fresh urgent ones
