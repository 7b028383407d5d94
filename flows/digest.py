"""The weekly digest: every stored engagement by health, with the week's health changes, as a
markdown artifact in the Prefect UI (deployment ``accord-digest-weekly`` in prefect.yaml).

The engagements come from the store. The store keeps only the current health, so the week's
changes come from the ``accord.engagement.health-changed`` events the sync flow emitted, read back
from the Prefect API (events are kept for ``PREFECT_EVENTS_RETENTION_PERIOD``, 7 days by default).
The daily reminder pass is the push flow on its own schedule (prefect.yaml), not a flow of its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from accord.settings import AccordSettings
from flows.report import HEALTH_MARK, _md_escape, _short, engagement_markdown
from flows.sync import HEALTH_EVENT
from store import Store

ORDER = {"red": 0, "amber": 1, "green": 2}


@dataclass(frozen=True)
class HealthMove:
    """One health change seen in the window (from a health-changed event)."""

    occurred: datetime
    engagement_id: str
    previous: str
    current: str


@task(name="read-health-changes")
def read_health_changes(since: datetime, until: datetime) -> list[HealthMove]:
    """The health-changed events of the window, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventOrder

    event_filter = EventFilter(
        occurred=EventOccurredFilter.model_validate({"since": since, "until": until}),
        event=EventNameFilter(name=[HEALTH_EVENT]),
        order=EventOrder.ASC,
    )
    moves: list[HealthMove] = []
    with get_client(sync_client=True) as client:
        page = client.read_events(filter=event_filter, limit=50)  # the API allows 50 a page
        while True:
            for event in page.events:
                payload = event.payload
                moves.append(
                    HealthMove(event.occurred, str(payload["engagement_id"]), str(payload["from"]), str(payload["to"]))
                )
            if page.next_page is None:
                break
            page = client.read_events_page(str(page.next_page))
    return moves


def digest_markdown(
    engagements: list[dict[str, Any]], moves: list[HealthMove], since: datetime, until: datetime
) -> str:
    """The digest: counts by health, the week's changes per engagement (first and last level), the table."""
    rows = [e["summary"] for e in engagements]
    by_id = {r["id"]: r for r in rows}
    counts = Counter({"red": 0, "amber": 0, "green": 0})
    counts.update(r["health"] for r in rows)
    lines = [
        f"# Accord weekly digest, {since:%Y-%m-%d} to {until:%Y-%m-%d}",
        "",
        f"**Engagements:** {len(rows)} — "
        + ", ".join(f"{HEALTH_MARK[k]} {counts[k]}" for k in ("red", "amber", "green")),
        "",
        "## Health changes this week",
        "",
    ]
    first_last: dict[str, tuple[str, str, int]] = {}
    for move in moves:
        start = first_last[move.engagement_id][0] if move.engagement_id in first_last else move.previous
        n = first_last[move.engagement_id][2] + 1 if move.engagement_id in first_last else 1
        first_last[move.engagement_id] = (start, move.current, n)
    if not first_last:
        lines.append("No engagement changed health this week.")
    else:
        lines += ["| engagement | client | week start | now | changes |", "|---|---|---|---|---:|"]

        def order(item: tuple[str, tuple[str, str, int]]) -> tuple[int, str]:
            return (ORDER.get(item[1][1], 3), item[0])

        for engagement_id, (start, end, n) in sorted(first_last.items(), key=order):
            row = by_id.get(engagement_id)
            name = _md_escape(_short(row["name"])) if row else f"{_md_escape(engagement_id)} (no longer tracked)"
            client = _md_escape(_short(row["client"], 40)) if row else "—"
            lines.append(f"| {name} | {client} | {HEALTH_MARK.get(start, start)} | {HEALTH_MARK.get(end, end)} | {n} |")
        turned_red = sum(1 for start, end, _ in first_last.values() if end == "red" and start != "red")
        recovered = sum(1 for start, end, _ in first_last.values() if start == "red" and end != "red")
        lines += ["", f"**Turned red:** {turned_red} — **recovered from red:** {recovered}"]
    lines += ["", "## All engagements", ""]
    lines += engagement_markdown(rows)
    return "\n".join(lines)


@flow(name="accord-digest")
def digest_flow(days: int = 7) -> dict[str, Any]:
    """Publish the digest of the last ``days`` days as the markdown artifact ``accord-digest``."""
    logger = get_run_logger()
    until = datetime.now(UTC)
    since = until - timedelta(days=days)
    settings = AccordSettings()  # the store only: the digest needs no API credentials
    store = Store(settings.database_url)
    store.create_all()
    try:
        engagements = store.load_engagements()
    finally:
        store.dispose()
    moves = read_health_changes(since, until)
    markdown = digest_markdown(engagements, moves, since, until)
    create_markdown_artifact(key="accord-digest", markdown=markdown, description=f"Accord digest, last {days} days")
    logger.info("digest: %d engagements, %d health changes in %d days", len(engagements), len(moves), days)
    return {"engagements": len(engagements), "health_changes": len(moves), "since": since.isoformat()}
