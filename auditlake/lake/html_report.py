"""`auditlake report`: the dashboards' views of a lake as one self-contained HTML page.

The page shows what the ADX dashboard shows (dashboards/adx-dashboard.json): the health findings,
log flow per content type, the two legs of latency, ledger outcomes, schema drift and the
tampering timeline. ``report_queries`` gives the KQL of each view and ``render_html`` draws their
results, so the same page comes from the local lake or from any Kusto endpoint: this module never
opens a connection.

The page needs nothing from the network (no script, stylesheet, font or image is fetched): the
charts are inline SVG drawn here, with the data table under each, and tooltips are SVG titles.
Every value is escaped, because the audit log is written by whoever the tenant lets in: an inbox
rule may well be named ``<script>``. What each chart plots is also in ``<script
type="application/json" id="chart-data">`` (data, never executed) and in ``data-label``,
``data-series`` and ``data-value`` attributes on the marks, so tests and scripts can read the
numbers back without parsing SVG geometry.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from auditlake.health import HealthThresholds, findings, health_query, verdict_line

Result = tuple[list[str], list[str], list[tuple[Any, ...]]]
"""(column names, type names, rows), as `auditlake query` and the Kusto endpoint return them."""

TABLE_ROWS = 500
"""Rows shown per data table; the rest are counted, not shown (a week of hourly flow is ~840)."""

LATENCY_LEGS: dict[str, tuple[str, str]] = {
    "event_to_available": ("EventToAvailable", "Latency: event to available at Microsoft"),
    "available_to_queryable": ("AvailableToQueryable", "Latency: available to queryable here"),
}
PERCENTILES = ("P50", "P95", "P99", "Max")
LEDGER_STATUSES = ("ingested", "pending", "failed", "expired")
"""Ledger outcomes in the order the bars stack them; any status not settled counts as pending."""

# Fixed colours for the five content types, so a feed keeps its colour from chart to chart.
_FEED_COLOURS = {
    "Audit.AzureActiveDirectory": "#3b6fd4", "Audit.Exchange": "#d9822b", "Audit.SharePoint": "#2f9e6e",
    "Audit.General": "#8a5cc9", "DLP.All": "#c2477a",
}
_MORE_COLOURS = ("#4a9bb8", "#9a8a2e", "#6b6b6b", "#b5532f", "#3f7f3f")
_STATUS_COLOURS = {"ingested": "#5aa469", "pending": "#b8b8b8", "failed": "#d64545", "expired": "#7a1f1f"}
_PERCENTILE_COLOURS = {"P50": "#2f6fb0", "P95": "#d9822b", "P99": "#c2477a", "Max": "#7a1f1f"}


# -- the queries ------------------------------------------------------------------------------


def _span(days: float) -> str:
    # Whole seconds: duckdb-kql and ADX both read `604800s`, whatever the fraction of a day.
    return f"{max(1, round(days * 86400))}s"


def report_queries(lookback_days: float = 7) -> dict[str, str]:
    """Name -> KQL of each view of the page, over the last *lookback_days* (the health checks
    keep their own thresholds: the alert rules' defaults). Run them all and give the results
    to ``render_html`` under the same names."""
    if not (math.isfinite(lookback_days) and lookback_days > 0):
        raise ValueError(f"lookback_days must be a positive number, not {lookback_days!r}")
    span = _span(lookback_days)
    # Hourly points for up to two weeks (336 per feed), daily beyond: a line stays readable.
    step = "1h" if lookback_days <= 14 else "1d"
    return {
        "health": health_query(HealthThresholds()),
        "log_flow": f"""AuditRecordDedup
| where TimeGenerated >= ago({span})
| summarize Records = count() by Bin = bin(TimeGenerated, {step}), ContentType
| order by Bin asc, ContentType asc""",
        "flow_gaps": f"""LogFlowGaps({span})
| project TenantId, ContentType, GapStart, GapEnd, GapHours, UsualGapHours, Ongoing
| order by GapStart asc""",
        "latency": f"AuditLatency({span})",
        "ledger": f"""ContentLedger
| where ContentCreated >= ago({span})
| extend SettledAt = coalesce(IngestedAt, FetchedAt, ListedAt)
| summarize arg_max(SettledAt, Status) by TenantId, ContentType, ContentId
| summarize Blobs = count() by ContentType, Status
| order by ContentType asc, Status asc""",
        "schema_drift": f"""SchemaDrift({span})
| project Change, Workload, RecordType, Operation, FieldPath, FieldType, FirstSeen, LastSeen, Records
| order by FirstSeen asc""",
        "tampering": f"""AuditTampering(ago({span}), now())
| project TimeGenerated, Detail, UserPrincipal, Operation, Target, ClientIP, TenantId
| order by TimeGenerated asc""",
    }


# -- values -----------------------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _as_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and value:
        try:
            return _as_time(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _as_seconds(value: Any) -> float | None:
    """A duration in seconds: AuditLatency gives timespans (timedelta), older lakes numbers."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _as_number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    """``42s``, ``75m``, ``29.6h``, ``3.2d``: as a person compares latencies."""
    sign, s = ("-" if seconds < 0 else ""), abs(seconds)
    if s < 90:
        return f"{sign}{s:.0f}s"
    if s < 90 * 60:
        return f"{sign}{s / 60:.0f}m"
    if s < 48 * 3600:
        return f"{sign}{s / 3600:.1f}h"
    return f"{sign}{s / 86400:.1f}d"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _iso(_as_time(value) or value)
    if isinstance(value, timedelta):
        return _duration(value.total_seconds())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return str(value)


def _rows(result: Result | None) -> list[dict[str, Any]]:
    if result is None:
        return []
    columns, _, rows = result
    return [dict(zip(columns, row, strict=False)) for row in rows]


def _colours(names: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    spare = iter(_MORE_COLOURS * (1 + len(names) // len(_MORE_COLOURS)))
    for name in names:
        feed = name.split(" (", 1)[0]
        out[name] = _FEED_COLOURS.get(feed) or next(spare)
    return out


def _feed_label(content_type: str, tenant: str, several_tenants: bool) -> str:
    return f"{content_type} ({tenant[:8]})" if several_tenants and tenant else content_type


# -- chart data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    start: datetime
    end: datetime

    def x(self, at: datetime, left: float, width: float) -> float:
        total = (self.end - self.start).total_seconds() or 1.0
        fraction = (at - self.start).total_seconds() / total
        return left + width * min(1.0, max(0.0, fraction))


def _log_flow(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Records per bin per content type, every bin from the first to the last (0 when none came)."""
    counts: dict[str, dict[datetime, float]] = {}
    for r in rows:
        at = _as_time(r.get("Bin"))
        if at is None:
            continue
        feed = str(r.get("ContentType") or "")
        counts.setdefault(feed, {})
        counts[feed][at] = counts[feed].get(at, 0.0) + _as_number(r.get("Records"))
    times = sorted({t for per in counts.values() for t in per})
    if not times:
        return {"bins": [], "step_seconds": 3600, "series": {}}
    steps = [(b - a).total_seconds() for a, b in pairwise(times)]
    step = min([s for s in steps if s > 0], default=3600.0)
    bins = [times[0]]
    while bins[-1] < times[-1] and len(bins) < 10_000:
        bins.append(bins[-1] + timedelta(seconds=step))
    return {
        "bins": [_iso(b) for b in bins],
        "step_seconds": step,
        "series": {feed: [int(per.get(b, 0)) for b in bins] for feed, per in sorted(counts.items())},
    }


def _latency(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Leg -> feed -> p50/p95/p99/max in seconds (None when the lake had nothing to measure)."""
    several = len({r.get("TenantId") for r in rows}) > 1
    out: dict[str, dict[str, dict[str, float | None]]] = {leg: {} for leg in LATENCY_LEGS}
    for r in rows:
        label = _feed_label(str(r.get("ContentType") or ""), str(r.get("TenantId") or ""), several)
        for leg, (column, _) in LATENCY_LEGS.items():
            out[leg][label] = {p.lower(): _as_seconds(r.get(f"{column}{p}")) for p in PERCENTILES}
    return out


def _ledger(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Content type -> blobs per outcome; statuses short of settled are pending."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        status = str(r.get("Status") or "")
        outcome = status if status in ("ingested", "failed", "expired") else "pending"
        per = out.setdefault(str(r.get("ContentType") or ""), dict.fromkeys(LEDGER_STATUSES, 0))
        per[outcome] += int(_as_number(r.get("Blobs")))
    return dict(sorted(out.items()))


def _events(rows: list[dict[str, Any]], time_column: str, row_of: Callable[[dict[str, Any]], str],
            label_of: Callable[[dict[str, Any]], str]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        at = _as_time(r.get(time_column))
        if at is not None:
            out.append({"time": _iso(at), "row": row_of(r), "label": label_of(r)})
    return out


def _drift_label(r: dict[str, Any]) -> str:
    field = f" {r.get('FieldPath')}" if r.get("FieldPath") else ""
    kind = f" ({r.get('FieldType')})" if r.get("FieldType") else ""
    return f"{r.get('Operation') or r.get('Workload') or ''}{field}{kind}"


def _tampering_label(r: dict[str, Any]) -> str:
    who = f" by {r.get('UserPrincipal')}" if r.get("UserPrincipal") else ""
    where = f" from {r.get('ClientIP')}" if r.get("ClientIP") else ""
    return f"{r.get('Operation') or ''} on {r.get('Target') or ''}{who}{where}"


def chart_data(results: Mapping[str, Result]) -> dict[str, Any]:
    """What each chart of the page plots, as the page's ``chart-data`` block holds it."""
    health = results.get("health")
    found = findings(health[0], health[2]) if health is not None else []
    return {
        "health": {"verdict": verdict_line(found) if health is not None else None,
                   "findings": [{"check": f.check, "severity": f.severity, "subject": f.subject} for f in found]},
        "log_flow": _log_flow(_rows(results.get("log_flow"))),
        "latency": _latency(_rows(results.get("latency"))),
        "ledger": _ledger(_rows(results.get("ledger"))),
        "schema_drift": _events(_rows(results.get("schema_drift")), "FirstSeen",
                                lambda r: str(r.get("Change") or ""), _drift_label),
        "tampering": _events(_rows(results.get("tampering")), "TimeGenerated",
                             lambda r: str(r.get("Detail") or ""), _tampering_label),
    }


# -- drawing ------------------------------------------------------------------------------------

_WIDTH = 960
_LEFT, _RIGHT = 210, 20


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * magnitude:
            return float(m * magnitude)
    return float(10 * magnitude)


def _svg(height: float, label: str, body: list[str], chart: str) -> str:
    return (f'<svg class="chart" data-chart="{_esc(chart)}" viewBox="0 0 {_WIDTH} {height:.0f}" role="img" '
            f'aria-label="{_esc(label)}" preserveAspectRatio="xMinYMin meet">' + "".join(body) + "</svg>")


def _time_axis(window: _Window, left: float, width: float, top: float, bottom: float) -> list[str]:
    """Vertical grid lines at midnight UTC (every few days on a long window), dated below."""
    days = max(1.0, (window.end - window.start).total_seconds() / 86400)
    every = max(1, math.ceil(days / 10))
    out = []
    day = window.start.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    n = 0
    while day < window.end:
        if n % every == 0:
            x = window.x(day, left, width)
            out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}"/>')
            out.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">'
                       f'{_esc(f"{day:%b} {day.day}")}</text>')
        day += timedelta(days=1)
        n += 1
    return out


def _legend(colours: Mapping[str, str]) -> str:
    items = "".join(f'<span class="key"><i style="background:{c}"></i>{_esc(name)}</span>'
                    for name, c in colours.items())
    return f'<div class="legend">{items}</div>'


def _draw_log_flow(data: dict[str, Any], gaps: list[dict[str, Any]], window: _Window) -> str:
    series: dict[str, list[int]] = data["series"]
    if not series:
        return '<p class="empty">No records in this period.</p>'
    bins = [t for t in (_as_time(b) for b in data["bins"]) if t is not None]
    height, top, bottom, left = 300.0, 12.0, 270.0, 60.0
    width = _WIDTH - left - _RIGHT
    top_value = _nice_max(max((max(v) for v in series.values() if v), default=1))
    colours = _colours(list(series))
    body = []
    for gap in gaps:
        start, end = _as_time(gap.get("GapStart")), _as_time(gap.get("GapEnd"))
        if start is None or end is None or end < window.start:
            continue
        x1, x2 = window.x(start, left, width), window.x(end, left, width)
        body.append(f'<rect class="gap" x="{x1:.1f}" y="{top}" width="{max(2.0, x2 - x1):.1f}" height="{bottom - top}">'
                    f'<title>{_esc(gap.get("ContentType"))} silent {_esc(_cell(gap.get("GapHours")))} h '
                    f'from {_esc(_cell(gap.get("GapStart")))}</title></rect>')
    for i in range(5):
        value = top_value * i / 4
        y = bottom - (bottom - top) * i / 4
        body.append(f'<line class="grid" x1="{left}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        body.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,.0f}</text>')
    body += _time_axis(window, left, width, top, bottom)
    for feed, values in series.items():
        points = " ".join(f"{window.x(t, left, width):.1f},{bottom - (bottom - top) * v / top_value:.1f}"
                          for t, v in zip(bins, values, strict=False))
        body.append(f'<polyline class="line" data-series="{_esc(feed)}" points="{points}" '
                    f'style="stroke:{colours[feed]}"><title>{_esc(feed)}: {sum(values):,} records</title></polyline>')
    step = "hour" if data["step_seconds"] <= 3600 else "day"
    return _legend(colours) + _svg(height, f"records per {step} per content type", body, "log_flow")


def _log_x(seconds: float, low: float, high: float, left: float, width: float) -> float:
    value = min(high, max(low, seconds))
    return left + width * (math.log10(value) - math.log10(low)) / ((math.log10(high) - math.log10(low)) or 1.0)


_LATENCY_TICKS = {1: "1s", 10: "10s", 60: "1m", 300: "5m", 900: "15m", 3600: "1h", 6 * 3600: "6h", 86400: "1d",
                  3 * 86400: "3d", 7 * 86400: "7d", 30 * 86400: "30d"}


def _draw_latency(leg: str, feeds: Mapping[str, Mapping[str, float | None]]) -> str:
    measured = {f: p for f, p in feeds.items() if any(v is not None for v in p.values())}
    if not measured:
        return '<p class="empty">No records ingested in this period.</p>'
    values = [v for p in measured.values() for v in p.values() if v is not None]
    # A log scale: a p50 of an hour and a tail of a day must both be readable on one axis.
    # From a tick well below the fastest value (a dot on the axis reads as zero) to one above the slowest.
    low = float(max([t for t in _LATENCY_TICKS if t <= max(1.0, min(values)) / 3], default=1))
    high = float(min([t for t in _LATENCY_TICKS if t >= max(values)], default=max(values)))
    row, top, left = 34.0, 10.0, float(_LEFT)
    width = _WIDTH - left - _RIGHT - 290
    bottom = top + row * len(measured)
    body = []
    for tick, name in _LATENCY_TICKS.items():
        if low <= tick <= high:
            x = _log_x(tick, low, high, left, width)
            body.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}"/>')
            body.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{name}</text>')
    for i, (feed, p) in enumerate(measured.items()):
        y = top + row * i + row / 2
        body.append(f'<text class="label" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_esc(feed)}</text>')
        p50, p95, top_value = p.get("p50"), p.get("p95"), p.get("max")
        if p50 is not None and top_value is not None:
            x1, x2 = _log_x(p50, low, high, left, width), _log_x(top_value, low, high, left, width)
            body.append(f'<line class="whisker" x1="{x1:.1f}" x2="{x2:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        if p50 is not None and p95 is not None:
            x1, x2 = _log_x(p50, low, high, left, width), _log_x(p95, low, high, left, width)
            body.append(f'<rect class="usual" x="{x1:.1f}" y="{y - 7:.1f}" width="{max(2.0, x2 - x1):.1f}" height="14">'
                        f'<title>{_esc(feed)}: half within {_esc(_duration(p50))}, 95% within '
                        f'{_esc(_duration(p95))}</title></rect>')
        for name in PERCENTILES:
            value = p.get(name.lower())
            if value is None:
                continue
            x = _log_x(value, low, high, left, width)
            body.append(f'<circle class="mark" cx="{x:.1f}" cy="{y:.1f}" r="5" '
                        f'style="fill:{_PERCENTILE_COLOURS[name]}" '
                        f'data-label="{_esc(feed)}" data-series="{name.lower()}" data-value="{value!r}">'
                        f'<title>{_esc(feed)} {name.lower()}: {_esc(_duration(value))}</title></circle>')
        summary = " · ".join(f"{n.lower()} {_duration(v)}" for n in PERCENTILES if (v := p.get(n.lower())) is not None)
        body.append(f'<text class="value" x="{left + width + 10:.1f}" y="{y + 4:.1f}">{_esc(summary)}</text>')
    keys = _legend({name.lower(): c for name, c in _PERCENTILE_COLOURS.items()})
    return keys + _svg(bottom + 24, LATENCY_LEGS[leg][1], body, f"latency-{leg}")


def _draw_ledger(data: Mapping[str, Mapping[str, int]]) -> str:
    if not data:
        return '<p class="empty">No content blobs in this period.</p>'
    row, top, left = 34.0, 10.0, float(_LEFT)
    width = _WIDTH - left - _RIGHT - 250
    most = max(sum(per.values()) for per in data.values()) or 1
    body = []
    for i, (feed, per) in enumerate(data.items()):
        y = top + row * i + row / 2
        body.append(f'<text class="label" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_esc(feed)}</text>')
        x = left
        for status in LEDGER_STATUSES:
            n = per.get(status, 0)
            if not n:
                continue
            # A blob lost among hundreds would be a sliver: a problem keeps a visible width.
            w = max(width * n / most, 0.0 if status == "ingested" else 5.0)
            body.append(f'<rect class="segment" x="{x:.1f}" y="{y - 9:.1f}" width="{w:.1f}" height="18" '
                        f'style="fill:{_STATUS_COLOURS[status]}" data-label="{_esc(feed)}" '
                        f'data-series="{status}" data-value="{n}"><title>{_esc(feed)}: {n:,} {status}</title></rect>')
            x += w
        parts = [f"{per[s]:,} {s}" for s in LEDGER_STATUSES if per.get(s)]
        problem = any(per.get(s) for s in ("failed", "expired"))
        body.append(f'<text class="value{" bad" if problem else ""}" x="{x + 8:.1f}" y="{y + 4:.1f}">'
                    f'{_esc(" · ".join(parts))}</text>')
    return _legend(_STATUS_COLOURS) + _svg(top + row * len(data) + 10, "content blobs by outcome", body, "ledger")


def _draw_timeline(events: list[dict[str, str]], window: _Window, chart: str, empty: str) -> str:
    if not events:
        return f'<p class="empty good">{_esc(empty)}</p>'
    rows = list(dict.fromkeys(e["row"] for e in events))
    row, top, left = 30.0, 10.0, float(_LEFT)
    width = _WIDTH - left - _RIGHT
    bottom = top + row * len(rows)
    body = _time_axis(window, left, width, top, bottom)
    for i, name in enumerate(rows):
        y = top + row * i + row / 2
        body.append(f'<line class="lane" x1="{left}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        body.append(f'<text class="label" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_esc(name)}</text>')
    for e in events:
        at = _as_time(e["time"])
        if at is None:
            continue
        y = top + row * rows.index(e["row"]) + row / 2
        body.append(f'<circle class="event" cx="{window.x(at, left, width):.1f}" cy="{y:.1f}" r="6" '
                    f'data-label="{_esc(e["label"])}" data-series="{_esc(e["row"])}" data-value="{_esc(e["time"])}">'
                    f'<title>{_esc(e["time"])} {_esc(e["label"])}</title></circle>')
    return _svg(bottom + 24, chart, body, chart)


def _table(result: Result | None) -> str:
    if result is None:
        return '<p class="empty">This view was not queried.</p>'
    columns, _, rows = result
    if not rows:
        return '<p class="note">No rows.</p>'
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for r in rows[:TABLE_ROWS]:
        cells = []
        for value in r:
            text = _cell(value)
            short = text if len(text) <= 160 else text[:159] + "…"
            title = f' title="{_esc(text)}"' if short != text else ""
            cells.append(f"<td{title}>{_esc(short)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    more = (f'<p class="note">The first {TABLE_ROWS:,} of {len(rows):,} rows.</p>'
            if len(rows) > TABLE_ROWS else "")
    table = f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    return f'<div class="scroll">{table}</div>{more}'


def _data(result: Result | None, what: str = "The data") -> str:
    n = len(result[2]) if result is not None else 0
    return f"<details><summary>{_esc(what)} ({n:,} row{'' if n == 1 else 's'})</summary>{_table(result)}</details>"


def _window(data: Mapping[str, Any], generated_at: datetime) -> _Window:
    """The period the time charts share: from the first hour of log flow (or the earliest event
    shown) to when the page was made."""
    end = _as_time(generated_at) or datetime.now(UTC)
    starts = [t for t in (_as_time(b) for b in data["log_flow"]["bins"][:1]) if t is not None]
    for key in ("schema_drift", "tampering"):
        starts += [t for t in (_as_time(e["time"]) for e in data[key]) if t is not None]
    start = min(starts, default=end - timedelta(days=7))
    if start >= end:
        start = end - timedelta(hours=1)
    return _Window(start, end)


_STYLE = """
:root { color-scheme: light; --ink: #1f2328; --muted: #656d76; --line: #d8dee4; --bg: #ffffff; --panel: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
  background: var(--bg); }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 60px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 36px 0 4px; padding-top: 12px; border-top: 1px solid var(--line); }
p.sub, p.note { color: var(--muted); margin: 4px 0 10px; }
.verdict { padding: 12px 16px; border-radius: 8px; font-weight: 600; margin: 16px 0 8px; }
.verdict.ok { background: #e6f4ea; color: #1e6b34; }
.verdict.bad { background: #fde8e8; color: #8a1c1c; }
.verdict.warn { background: #fff4e0; color: #7a4a00; }
svg.chart { width: 100%; height: auto; display: block; margin: 6px 0; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .lane { stroke: var(--panel); stroke-width: 14; }
svg .tick { fill: var(--muted); font-size: 11px; }
svg .label { fill: var(--ink); font-size: 12px; }
svg .value { fill: var(--muted); font-size: 12px; }
svg .value.bad { fill: #b42318; font-weight: 600; }
svg .line { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
svg .gap { fill: #d64545; fill-opacity: 0.14; }
svg .whisker { stroke: #8c959f; stroke-width: 2; }
svg .usual { fill: #9ec5ea; }
svg .event { fill: #d64545; stroke: #fff; stroke-width: 1.5; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; color: var(--muted); font-size: 12px; margin: 6px 0; }
.legend .key i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
.empty { color: var(--muted); font-style: italic; }
.empty.good { color: #1e6b34; font-style: normal; }
details { margin: 6px 0 0; }
summary { cursor: pointer; color: var(--muted); }
.scroll { overflow-x: auto; max-height: 480px; overflow-y: auto; border: 1px solid var(--line); border-radius: 6px;
  margin-top: 6px; }
table { border-collapse: collapse; font-size: 12px; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top;
  white-space: nowrap; }
th { position: sticky; top: 0; background: var(--panel); }
td { max-width: 420px; overflow: hidden; text-overflow: ellipsis; }
tr.error td:first-child { border-left: 3px solid #d64545; }
tr.warning td:first-child { border-left: 3px solid #d9822b; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def _health_section(result: Result | None, data: Mapping[str, Any]) -> str:
    if result is None:
        return '<p class="empty">The health checks were not run.</p>'
    found = findings(result[0], result[2])
    verdict = str(data["health"]["verdict"])
    tone = "ok" if not found else ("bad" if any(f.is_error for f in found) else "warn")
    out = [f'<div class="verdict {tone}">{_esc(verdict)}</div>']
    if found:
        rows = "".join(
            f'<tr class="{"error" if f.is_error else "warning"}"><td>{_esc(f.severity)}</td><td>{_esc(f.check)}</td>'
            f"<td>{_esc(f.content_type)}</td><td>{_esc(f.subject)}</td><td>{_esc(_cell(f.since))}</td>"
            f'<td title="{_esc(f.detail)}">{_esc(f.detail)}</td></tr>'
            for f in found)
        out.append('<div class="scroll"><table><thead><tr><th>Severity</th><th>Check</th><th>Content type</th>'
                   f"<th>Subject</th><th>Since</th><th>Detail</th></tr></thead><tbody>{rows}</tbody></table></div>")
    out.append('<p class="note">The checks of the Azure alert rules (HealthChecks, default thresholds); '
               "what each means and what to do: docs/health.md.</p>")
    return "".join(out)


def _chart_json(data: Mapping[str, Any]) -> str:
    # Inside <script>, only `<`, `>` and `&` could end the block or start markup: escape them as
    # JSON escapes, which leaves the data unchanged for any JSON reader.
    text = json.dumps(data, ensure_ascii=False, sort_keys=True, default=str)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_html(results: Mapping[str, Result], *, title: str, generated_at: datetime) -> str:
    """The page for *results* (name -> (columns, types, rows), names as ``report_queries`` gives
    them; a missing view is shown as not queried). Self-contained and static: no script runs."""
    data = chart_data(results)
    window = _window(data, generated_at)
    latency = data["latency"]
    gaps = _rows(results.get("flow_gaps"))
    sections = [
        ("Health", "What the alert rules would say now.", _health_section(results.get("health"), data), ""),
        ("Log flow per content type",
         "Records per hour by when they happened; shaded: a feed silent for longer than its usual rhythm "
         "(LogFlowGaps). The last hour or two are always low: records reach the API about an hour late.",
         _draw_log_flow(data["log_flow"], gaps, window),
         _data(results.get("log_flow")) + _data(results.get("flow_gaps"), "Silences (LogFlowGaps)")),
        (LATENCY_LEGS["event_to_available"][1],
         "Microsoft's own delay, which AuditLake cannot change. Bar: p50 to p95; line: to the slowest record.",
         _draw_latency("event_to_available", latency["event_to_available"]), ""),
        (LATENCY_LEGS["available_to_queryable"][1],
         "From the blob becoming available to its rows being queryable here; long after a backfill.",
         _draw_latency("available_to_queryable", latency["available_to_queryable"]),
         _data(results.get("latency"), "Both legs (AuditLatency)")),
        ("Ledger outcomes", "Every content blob of the period by what became of it: failed blobs can be replayed "
         "until they expire; expired ones are lost.", _draw_ledger(data["ledger"]), _data(results.get("ledger"))),
        ("Schema drift", "Operations, fields and JSON types first seen in this period, and fields no longer sent.",
         _draw_timeline(data["schema_drift"], window, "schema_drift", "No change in the shape of the records."),
         _data(results.get("schema_drift"))),
        ("Audit tampering", "Audit switched off or weakened, and Management API subscriptions found stopped.",
         _draw_timeline(data["tampering"], window, "tampering", "Nobody switched auditing off in this period."),
         _data(results.get("tampering"))),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing on this page may fetch or run anything, whatever the data holds.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body><main>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="sub">Generated {_esc(_iso(_as_time(generated_at) or generated_at))}; '
        f"period {_esc(_iso(window.start))} to {_esc(_iso(window.end))} (UTC).</p>",
    ]
    for heading, sub, chart, table in sections:
        parts.append(f"<section><h2>{_esc(heading)}</h2><p class=\"note\">{_esc(sub)}</p>{chart}{table}</section>")
    parts.append('<footer>AuditLake report: the views of the ADX dashboard, from the same KQL functions.</footer>')
    parts.append(f'<script type="application/json" id="chart-data">{_chart_json(data)}</script>')
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
