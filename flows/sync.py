"""The sync flow: pull the three sources concurrently, unify, store, and report in the Prefect UI.

Thin wiring over ``flows.engine``: each source is a task (so the UI shows which one failed and
why), and the run ends with a markdown artifact of counts and an engagement table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.events.worker import EventsWorker

from accord.settings import AccordSettings, load_settings
from engagement.mapping import Mapping, load_mapping
from flows.budget import budget_throttles
from flows.engine import SourceReport, SyncReport, keeping_errors, pull_source, run_sync
from flows.failures import FailureContext, OpsMessage, explain, publish
from flows.report import sync_markdown
from store import Store

HEALTH_EVENT = "accord.engagement.health-changed"
JOURNAL_DAYS = 30  # a health event not sent for this long is dropped (events were off all along)


def emit_health_events(store: Store, logger: Any = None) -> int:
    """One Prefect event per journaled health transition (``Store.health_events``: this run's, and
    any that a failed or killed run stored and could not send), oldest first, so an automation can
    notify. Ids and reason codes only: names and reasons stay in Accord. Each event carries its
    journal's id and the time the unify saw the change; a page leaves the journal once Prefect's
    events worker has handled it. Events that cannot be sent here (events are off: no API) stay
    for a run that can send them, up to ``JOURNAL_DAYS`` (older ones are dropped, and counted in the
    log). Returns how many were sent."""
    dropped = store.forget_health_events(datetime.now(UTC) - timedelta(days=JOURNAL_DAYS))
    if dropped and logger is not None:
        logger.warning("%d health events older than %d days were never sent; dropped", dropped, JOURNAL_DAYS)
    sent = last = 0
    while True:
        page = store.health_events(after=last)  # after the last page: each page once, even if not deleted
        handed: list[int] = []
        for change in page:
            event = emit_event(
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
                id=change.event_id,
                occurred=change.occurred,
            )
            if event is None:
                break
            handed.append(change.seq)
        if handed:
            events_handled()
            store.health_events_sent(handed)
            sent += len(handed)
            last = handed[-1]
        if len(handed) < len(page):
            if logger is not None:
                logger.warning(
                    "%d health events could not be sent (are Prefect events on?); they stay for the next run",
                    len(page) - len(handed),
                )
            return sent
        if not page:
            return sent


def events_handled() -> None:
    """Wait until Prefect's events worker has handled every event emitted so far (sent, or given
    up on and logged by Prefect)."""
    EventsWorker.instance().wait_until_empty()


def _partitioned(
    report: SyncReport, partitions: int, logger: Any, fail_if_sources_failed: Callable[[], None]
) -> dict[str, Any]:
    """After the pull: one ``accord-partition`` run per partition recomputes the engagements."""
    from flows.partition import check, fan_out

    create_markdown_artifact(
        key="accord-sync", markdown=sync_markdown(report), description="Accord sync: counts (engagements per partition)"
    )
    states = fan_out(partitions, "engagements")
    logger.info("partition runs: %s", dict(sorted(states.items())))
    fail_if_sources_failed()
    check(states, "engagements")
    return report.to_json() | {"partitions": {str(k): s for k, s in sorted(states.items())}}


def send_health_events_after_failure(store: Store, logger: Any) -> None:
    """``emit_health_events`` for a run that is failing: what it cannot send stays journaled for the
    next run, and its own failure is logged, never raised over the run's."""
    try:
        emit_health_events(store, logger)
    except Exception as exc:
        logger.warning("health events stay journaled for the next run: %s", type(exc).__name__)


class SyncFailedError(RuntimeError):
    """The sync failed; the message says what, the likely cause, what to check and what is kept (the
    sources that could be pulled were stored and the engagements updated)."""


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
def sync_flow(full: bool = False, mapping_path: str | None = None, partitions: int = 0) -> dict[str, Any]:
    """Pull Salesforce, Jira and Google Calendar, unify into engagements, store them.

    ``full`` re-reads everything instead of continuing from the stored cursors. ``partitions`` > 0:
    the engagements are recomputed by that many ``accord-partition`` runs, on any worker of the
    pool (flows/partition.py), instead of in this run. A run that fails says
    why in words an ops person can act on (``flows.failures``): its state message, the
    ``accord-failure`` artifact and the log.
    """
    logger = get_run_logger()
    context = FailureContext("sync")
    try:
        settings = context.settings = load_settings()
        context.mapping_path = str(mapping_path or settings.mapping)
        mapping = context.mapping = load_mapping(context.mapping_path)
    except Exception as exc:
        raise SyncFailedError(publish("sync", [explain(exc, context)], logger)) from exc
    return run_sync_flow(settings, mapping, full=full, logger=logger, context=context, partitions=partitions)


def run_sync_flow(
    settings: AccordSettings,
    mapping: Mapping,
    *,
    full: bool,
    logger: Any,
    context: FailureContext | None = None,
    partitions: int = 0,
) -> dict[str, Any]:
    context = context or FailureContext("sync", settings, mapping, str(settings.mapping))
    errors: dict[str, BaseException] = {}  # what stopped each failed source, for its explanation

    def pull_all(
        sources: tuple[str, ...], upper: datetime, full: bool, reconcile: bool | None
    ) -> dict[str, Callable[[], SourceReport]]:
        futures = {s: pull_task.submit(s, settings, mapping, settings.database_url, upper, full) for s in sources}
        return {s: f.result for s, f in futures.items()}

    try:
        with budget_throttles(settings):
            store = Store(settings.database_url)
            try:
                store.create_all()
                pulls = keeping_errors(pull_all, errors)
                try:
                    report = run_sync(settings, mapping, store, full=full, pull_all=pulls, unify=partitions <= 0)
                except Exception:
                    # Engagements a failed unify stored before it failed: their events go out now.
                    send_health_events_after_failure(store, logger)
                    raise
                health_events = emit_health_events(store, logger)
            finally:
                store.dispose()
    except Exception as exc:
        raise SyncFailedError(publish("sync", [explain(exc, context)], logger)) from exc

    def fail_if_sources_failed() -> None:
        """Fail the run with an ops message per source that could not be pulled."""
        if not report.failed:
            return
        messages = []
        for failed in report.failed:
            error = errors.get(failed.source)
            if error is not None:
                messages.append(explain(error, context, source=failed.source))
            else:
                messages.append(
                    OpsMessage(
                        failed.source,
                        f"{failed.source} could not be pulled",
                        "see the pull task's log",
                        (),
                        context.kept(failed.source),
                    )
                )
        raise SyncFailedError(publish("sync", messages, logger))

    if partitions > 0:
        return _partitioned(report, partitions, logger, fail_if_sources_failed)
    assert report.view is not None
    create_markdown_artifact(
        key="accord-sync", markdown=sync_markdown(report), description="Accord sync: counts and engagements"
    )
    logger.info("engagements by health: %s; %d health events sent", report.view.health_counts(), health_events)
    fail_if_sources_failed()
    return report.to_json() | {"health_events": health_events}
