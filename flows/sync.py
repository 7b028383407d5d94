"""The sync flow: pull the three sources concurrently, unify, store, and report in the Prefect UI.

Thin wiring over ``flows.engine``: each source is a task (so the UI shows which one failed and
why), and the run ends with a markdown artifact of counts and an engagement table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from accord.settings import AccordSettings, load_settings
from engagement.mapping import Mapping, load_mapping
from flows.engine import SourceReport, SyncReport, pull_source, run_sync
from flows.report import sync_markdown
from store import Store

HEALTH_EVENT = "accord.engagement.health-changed"


def emit_health_events(report: SyncReport) -> int:
    """One Prefect event per engagement whose health changed (not for first sightings), so an
    automation can notify. Ids and reason codes only: names and reasons stay in Accord."""
    emitted = 0
    for change in report.health_changes:
        if change.previous is None or change.current is None:
            continue
        emit_event(
            event=HEALTH_EVENT,
            resource={
                "prefect.resource.id": f"accord.engagement.{change.engagement_id}",
                "accord.health": change.current,
            },
            payload={
                "engagement_id": change.engagement_id,
                "from": change.previous,
                "to": change.current,
                "reason_codes": list(change.reason_codes),
            },
        )
        emitted += 1
    return emitted


class SyncFailedError(RuntimeError):
    """Some sources could not be pulled; the others were stored and the engagements updated."""


@task(name="pull", task_run_name="pull-{source}", retries=0)
def pull_task(
    source: str, settings: AccordSettings, mapping: Mapping, store_url: str, upper: datetime, full: bool
) -> SourceReport:
    logger = get_run_logger()
    store = Store(store_url)
    try:
        report = pull_source(source, settings, mapping, store, upper=upper, full=full)
    finally:
        store.dispose()
    for stream, s in sorted(report.streams.items()):
        logger.info(
            "%s.%s: %d pulled in %d pages, %d changed, %d deleted (%d by reconciliation)",
            source,
            stream,
            s.pulled,
            s.pages,
            s.changed,
            s.deleted,
            s.reconciled_deleted,
        )
    return report


@flow(name="accord-sync", log_prints=False)
def sync_flow(full: bool = False, mapping_path: str | None = None) -> dict[str, Any]:
    """Pull Salesforce, Jira and Google Calendar, unify into engagements, store them.

    ``full`` re-reads everything instead of continuing from the stored cursors.
    """
    logger = get_run_logger()
    settings = load_settings()
    mapping = load_mapping(mapping_path or settings.mapping)
    return run_sync_flow(settings, mapping, full=full, logger=logger)


def run_sync_flow(settings: AccordSettings, mapping: Mapping, *, full: bool, logger: Any) -> dict[str, Any]:
    store = Store(settings.database_url)
    store.create_all()

    def pull_all(
        sources: tuple[str, ...], upper: datetime, full: bool, reconcile: bool | None
    ) -> dict[str, Callable[[], SourceReport]]:
        futures = {s: pull_task.submit(s, settings, mapping, settings.database_url, upper, full) for s in sources}
        return {s: f.result for s, f in futures.items()}

    try:
        report = run_sync(settings, mapping, store, full=full, pull_all=pull_all)
    finally:
        store.dispose()
    assert report.view is not None
    create_markdown_artifact(
        key="accord-sync", markdown=sync_markdown(report), description="Accord sync: counts and engagements"
    )
    logger.info("engagements by health: %s", report.view.health_counts())
    emit_health_events(report)
    if report.failed:
        names = ", ".join(f"{s.source} ({s.error})" for s in report.failed)
        raise SyncFailedError(f"could not pull {names}; the other sources were stored")
    return report.to_json()
