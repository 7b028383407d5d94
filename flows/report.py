"""How a sync reads for people: markdown for the Prefect UI, a plain table for the terminal.

Engagement names and reasons appear (that is the product); contact emails and credentials never do.
"""

from __future__ import annotations

from typing import Any

from flows.engine import ROWS_KEPT as TABLE_LIMIT
from flows.engine import SyncReport, row_order
from flows.push_engine import ROWS_KEPT, PlanSummary, PushPlan, PushReport

HEALTH_MARK = {"green": "🟢 green", "amber": "🟠 amber", "red": "🔴 red"}


def _md_escape(text: str) -> str:
    """Neutralise markdown and HTML in values that come from the org (names, reasons)."""
    out = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "*_`[]#":
        out = out.replace(ch, "\\" + ch)
    return " ".join(out.split())


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sync_markdown(report: SyncReport, max_engagements: int = TABLE_LIMIT) -> str:
    lines = [f"# Accord sync ({'full' if report.full else 'incremental'})", ""]
    lines.append(f"Started {report.started_at:%Y-%m-%d %H:%M:%S} UTC, took {report.seconds:.1f} s.")
    lines.append("")
    lines.append("| source | stream | pages | pulled | new | changed | deleted | reconciled deletes |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, source in sorted(report.sources.items()):
        if source.error:
            lines.append(f"| {name} | **failed**: {_md_escape(source.error)} | | | | | | |")
            continue
        for stream, s in sorted(source.streams.items()):
            lines.append(
                f"| {name} | {stream} | {s.pages} | {s.pulled} | {s.inserted} | {s.updated} | {s.deleted} "
                f"| {s.reconciled_deleted} |"
            )
    view = report.view
    if view is None:
        return "\n".join(lines)
    counts = view.health_counts()
    lines += [
        "",
        f"**Engagements:** {view.engagements} — " + ", ".join(f"{HEALTH_MARK[k]} {v}" for k, v in counts.items()),
        f"**Unknown stakeholders to review:** {view.unknown_stakeholders} — "
        f"**ambiguous meetings:** {view.ambiguous_meetings}",
        f"**Recomputed:** {_recomputed(view.clients_recomputed, view.clients_during_pull)}",
        "",
    ]
    if report.health_changes:
        lines.append(f"**Health changes this run:** {len(report.health_changes)}")
        lines.append("")
    lines += engagement_markdown(view.rows, max_engagements, view.engagements)
    return "\n".join(lines)


def _recomputed(clients: int | None, during: int = 0) -> str:
    """Which clients' engagements the run recomputed, and how many while a pull went on, for ops."""
    early = f" ({during} of them while a slower pull went on: their records were all in)" if during else ""
    if clients is None:
        return f"every client's engagements{early}"
    noun = "client's" if clients == 1 else "clients'"
    return (
        f"{clients} {noun} engagements (those the pulled changes touched or whose horizon passed; the rest hold){early}"
    )


def engagement_markdown(rows: list[dict[str, Any]], limit: int = TABLE_LIMIT, total: int | None = None) -> list[str]:
    """The table of ``rows`` (the first ``limit`` by ``row_order``) and how many of ``total`` it leaves out."""
    rows = sorted(rows, key=row_order)
    total = len(rows) if total is None else total
    lines = [
        "| health | engagement | client | stage | progress | last client meeting | next | reasons |",
        "|---|---|---|---|---:|---|---|---|",
    ]
    for r in rows[:limit]:
        reasons = " ".join(r["reasons"]) or "—"
        lines.append(
            f"| {HEALTH_MARK.get(r['health'], r['health'])} | {_md_escape(_short(r['name']))} "
            f"| {_md_escape(_short(r['client'], 40))} | {r['stage']} | {r['progress']:.0f}% "
            f"| {(r['last_client_meeting'] or '—')[:10]} | {(r['next_client_meeting'] or '—')[:10]} "
            f"| {_md_escape(reasons)} |"
        )
    shown = min(limit, len(rows))
    if total > shown:
        lines.append(f"| … | {total - shown} more | | | | | | |")
    return lines


def engagement_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table for `accord status`."""
    rows = sorted(rows, key=row_order)
    columns = (
        ("HEALTH", 6),
        ("STAGE", 10),
        ("DONE", 5),
        ("LAST MTG", 10),
        ("NEXT MTG", 10),
        ("ENGAGEMENT", 44),
    )
    header = "  ".join(f"{title:<{width}}" for title, width in columns) + "  REASONS"
    out = [header, "-" * len(header)]
    for r in rows:
        name = " ".join(_short(r["name"], 44).split())
        reasons = " ".join(r["reasons"]) or "-"
        last = (r["last_client_meeting"] or "-")[:10]
        upcoming = (r["next_client_meeting"] or "-")[:10]
        cells = (r["health"], 6), (r["stage"], 10), (f"{r['progress']:>4.0f}%", 5), (last, 10), (upcoming, 10)
        out.append("  ".join(f"{v:<{w}}" for v, w in cells) + f"  {name:<44}  {reasons}")
    return "\n".join(out)


def plan_markdown(plan: PlanSummary | PushPlan, limit: int = ROWS_KEPT) -> str:
    """The plan's counts per target and its first ``limit`` actions and skips."""
    summary = plan if isinstance(plan, PlanSummary) else PlanSummary.of(plan, limit)
    lines = [f"# Accord push plan ({summary.total} writes)", ""]
    by_target = summary.by_target()
    lines.append(", ".join(f"**{t}**: {n}" for t, n in by_target.items()) or "Nothing to write.")
    lines += ["", "| target | what | engagement | key | why |", "|---|---|---|---|---|"]
    shown = summary.actions[:limit]
    for a in shown:
        why = _md_escape(a["reason"])
        lines.append(f"| {a['target']} | {a['action']} {a['kind']} | {a['engagement']} | `{a['key']}` | {why} |")
    if summary.total > len(shown):
        lines.append(f"| … | {summary.total - len(shown)} more | | | |")
    if summary.left_alone:
        lines += ["", f"**Left alone:** {summary.left_alone}", "", "| engagement | what | why |", "|---|---|---|"]
        for s in summary.skipped[:limit]:
            lines.append(f"| {s.engagement_id} | {_md_escape(s.what)} | {_md_escape(s.why)} |")
        if summary.left_alone > min(limit, len(summary.skipped)):
            lines.append(f"| … | {summary.left_alone - min(limit, len(summary.skipped))} more | |")
    return "\n".join(lines)


def push_markdown(report: PushReport) -> str:
    lines = ["# Accord push results", "", "| target | attempted | delivered | failed | batches | outcomes | error |"]
    lines.append("|---|---:|---:|---:|---:|---|---|")
    for name, t in sorted(report.targets.items()):
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(t.outcomes.items())) or "—"
        error = _md_escape(t.error or "")
        lines.append(f"| {name} | {t.attempted} | {t.delivered} | {t.failed} | {t.batches} | {outcomes} | {error} |")
    lines += [
        "",
        "A batch is one writer call: Salesforce writes it as a collection request of up to 200 records "
        "after a lookup of their keys, Jira as one comment and one entity property per write (each "
        "checked first), Google Calendar as one batch request per calendar. The APIs' own usage "
        "figures count the requests.",
    ]
    failures = [(name, key, error) for name, t in report.targets.items() for key, error in t.failures]
    if failures:
        lines += ["", "**Failed writes** (kept in the outbox, retried next run):", "", "| target | key | error |"]
        lines.append("|---|---|---|")
        for name, key, error in failures[:100]:
            lines.append(f"| {name} | `{key}` | {_md_escape(error)} |")
    return "\n".join(lines)
