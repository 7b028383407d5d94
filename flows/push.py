"""The push flow: plan, then apply; the plan and the results are artifacts in the Prefect UI.

Run after each sync (see prefect.yaml). Each target is its own task, so the UI shows which one
failed and why; failed writes stay in the outbox and are retried by the next run. A run with
failures says what failed, why and what to check (``flows.failures``): its state message, the
``accord-failure`` artifact (one row per failed record key) and the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from accord.settings import AccordSettings, load_settings
from connectors.base import TargetWriter, WriteRequest, WriteResult
from connectors.errors import ConnectorError
from engagement.mapping import Mapping, load_mapping
from flows.budget import budget_throttles
from flows.failures import FailedWrite, FailureContext, OpsMessage, explain, explain_failed_writes, publish
from flows.push_engine import TARGETS, TargetReport, apply_target, build_writer, push
from flows.report import plan_markdown, push_markdown
from store import Store


class PushFailedError(RuntimeError):
    """Some writes failed; they stay in the outbox and the next push retries them. The message says
    what failed, the likely cause and what to check."""


class _KeepingError:
    """A writer that remembers the connector error that stopped a whole call (the engine keeps only
    its text), so the run can say which credential, permission or field to check."""

    def __init__(self, writer: TargetWriter, errors: list[ConnectorError]) -> None:
        self.writer = writer
        self.target = writer.target
        self.errors = errors

    def write(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        try:
            return self.writer.write(requests)
        except ConnectorError as exc:
            self.errors.append(exc)
            raise

    def close(self) -> None:
        self.writer.close()


@task(name="apply", task_run_name="apply-{target}", retries=0)
def apply_task(target: str, settings: AccordSettings, mapping: Mapping) -> tuple[TargetReport, OpsMessage | None]:
    """Apply ``target``'s due writes; with the explanation of a failure that stopped them all, if any."""
    errors: list[ConnectorError] = []

    def writer(name: str, s: AccordSettings, m: Mapping) -> TargetWriter:
        return _KeepingError(build_writer(name, s, m), errors)

    store = Store(settings.database_url)
    try:
        report = apply_target(target, store, settings, mapping, writer)
    finally:
        store.dispose()
    context = FailureContext("push", settings, mapping, str(settings.mapping))
    return report, explain(errors[-1], context, source=target) if errors else None


def failed_writes(report: dict[str, TargetReport], store: Store) -> list[FailedWrite]:
    """This run's failed writes (those each target report kept), each with whether the next push
    retries it (from the outbox)."""
    retriable = store.outbox.retriable([key for target in report.values() for key, _ in target.failures])
    return [
        FailedWrite(name, key, error, retriable.get(key))
        for name, target in sorted(report.items())
        for key, error in target.failures
    ]


@flow(name="accord-push")
def push_flow(dry_run: bool = False, partitions: int = 0) -> dict[str, Any]:
    """Plan status updates and reminders from the stored engagements; unless ``dry_run``, apply them.

    ``partitions`` > 0: that many ``accord-partition`` runs push, each for its partition of clients,
    on any worker of the pool (see flows/partition.py)."""
    if partitions > 0 and not dry_run:
        from flows.partition import check, fan_out

        states = fan_out(partitions, "push")
        check(states, "push")
        return {"partitions": {str(k): s for k, s in sorted(states.items())}}
    logger = get_run_logger()
    context = FailureContext("push")
    try:
        settings = context.settings = load_settings()
        mapping_path = Path(settings.mapping)
        context.mapping_path = str(mapping_path)
        mapping = context.mapping = load_mapping(mapping_path)
    except Exception as exc:
        raise PushFailedError(publish("push", [explain(exc, context)], logger)) from exc
    messages: list[OpsMessage] = []  # one per target whose writes stopped as a whole

    def apply(target: str) -> TargetReport:
        try:
            report, message = apply_task.submit(target, settings, mapping).result()
        except Exception as exc:  # e.g. no connection settings for this target: the other targets go on
            messages.append(explain(exc, context, source=target))
            return TargetReport(target, error=type(exc).__name__)
        if message is not None:
            messages.append(message)
        return report

    store = Store(settings.database_url)
    try:
        with budget_throttles(settings):
            store.create_all()
            if dry_run:
                from flows.push_engine import plan_summary

                summary = plan_summary(store, mapping, mapping_path)
                create_markdown_artifact(
                    key="accord-plan", markdown=plan_markdown(summary), description="Accord push plan"
                )
                return summary.to_json()
            report = push(store, settings, mapping, mapping_path, apply=apply)
            writes = failed_writes(report.targets, store)
    except Exception as exc:
        raise PushFailedError(publish("push", [*messages, explain(exc, context)], logger)) from exc
    finally:
        store.dispose()
    create_markdown_artifact(key="accord-plan", markdown=plan_markdown(report.plan), description="Accord push plan")
    create_markdown_artifact(key="accord-push", markdown=push_markdown(report), description="Accord push results")
    for name, target in report.targets.items():
        logger.info("%s: %d delivered, %d failed, in %d batches", name, target.delivered, target.failed, target.batches)
    # Writes the targets refused one by one (those of a call that failed as a whole are explained above).
    whole = {name: target.error for name, target in report.targets.items() if target.error}
    for name in TARGETS:
        kept = report.targets.get(name)
        if kept is not None and kept.refused:
            refused = [w for w in writes if w.target == name and w.error != whole.get(name)]
            messages.append(explain_failed_writes(name, refused, context, total=kept.refused, final=kept.refused_final))
    if messages:
        raise PushFailedError(publish("push", messages, logger, writes))
    return report.to_json()


__all__ = ["TARGETS", "push_flow"]
