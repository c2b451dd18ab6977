"""The audit log: filtered on the page, exported as CSV (the export itself is audited)."""

import csv
import io
import re
from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from appliance.domain.audit import AuditEventType
from appliance.domain.monitoring import EventRow
from appliance.web.dependencies import Viewer, Wired, page
from appliance.web.ports import EventFilter, Ports

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A formula can also start after a separator, where a spreadsheet told to split on it would
# begin a new cell: a trigger character there gets the same quote mark.
_AFTER_SEPARATOR = re.compile(r"([,;|\t\r\n])(?=[=+\-@])")
LIMIT = 1000  # events in one CSV export
PAGE = 100  # events on one page
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC)

router = APIRouter()


def spreadsheet_safe(cell: str) -> str:
    """A cell a spreadsheet shows as text, never runs as a formula (CSV injection): actors and
    details can hold what a stranger typed, such as the user name of a failed login."""
    cell = _AFTER_SEPARATOR.sub(r"\1'", cell)
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def _date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
        parsed = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise HTTPException(422, f"not a date: {text[:40]!r}") from exc
    if not EARLIEST <= parsed < LATEST:
        raise HTTPException(422, f"date out of range: {text[:40]!r}")
    return parsed


def _before(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or len(text) > 18:
        raise HTTPException(422, f"not an event number: {text[:40]!r}")
    return int(text)


def _events(request: Request, ports: Ports, limit: int) -> list[EventRow]:
    params = request.query_params
    where = EventFilter(
        event_type=params.get("event_type") or None,
        actor=params.get("actor") or None,
        study_instance_uid=params.get("study") or None,
        since=_date(params.get("since")),
        until=_date(params.get("until")),
        before_id=_before(params.get("before")),
    )
    return ports.audit.events(where, limit=limit)


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, user: Viewer, ports: Wired) -> HTMLResponse:
    """One page of events, newest first, with a link to the next older page."""
    events = _events(request, ports, PAGE + 1)
    older = None
    if len(events) > PAGE:
        events = events[:PAGE]
        query = {key: value for key, value in request.query_params.items() if key != "before"}
        older = urlencode({**query, "before": events[-1].id})
    return page(request, "audit.html", user, events=events, older=older,
                query=dict(request.query_params), types=list(AuditEventType))  # fmt: skip


@router.get("/audit.csv")
def audit_csv(request: Request, user: Viewer, ports: Wired) -> Response:
    rows = _events(request, ports, LIMIT)
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(["occurred_at", "event_type", "outcome", "actor", "study_instance_uid",
                     "job_id", "detail"])  # fmt: skip
    for e in rows:
        writer.writerow([
            e.occurred_at.isoformat(), e.event_type, e.outcome, spreadsheet_safe(e.actor),
            e.study_instance_uid or "", e.job_id or "", spreadsheet_safe(e.detail or ""),
        ])  # fmt: skip
    ports.audit.exported(len(rows), user.username)
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )
