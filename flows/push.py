"""The push flow: plan, then apply; the plan and the results are artifacts in the Prefect UI.

Run after each sync (see prefect.yaml). Each target is its own task, so the UI shows which one
failed and why; failed writes stay in the outbox and are retried by the next run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from accord.settings import AccordSettings, load_settings
from engagement.mapping import Mapping, load_mapping
from flows.push_engine import TARGETS, TargetReport, apply_target, push
from flows.report import plan_markdown, push_markdown
from store import Store


class PushFailedError(RuntimeError):
    """Some writes failed; they stay in the outbox and the next push retries them."""


@task(name="apply", task_run_name="apply-{target}", retries=0)
def apply_task(target: str, settings: AccordSettings, mapping: Mapping) -> TargetReport:
    store = Store(settings.database_url)
    try:
        return apply_target(target, store, settings, mapping)
    finally:
        store.dispose()


@flow(name="accord-push")
def push_flow(dry_run: bool = False) -> dict[str, Any]:
    """Plan status updates and reminders from the stored engagements; unless ``dry_run``, apply them."""
    logger = get_run_logger()
    settings = load_settings()
    mapping_path = Path(settings.mapping)
    mapping = load_mapping(mapping_path)
    store = Store(settings.database_url)
    store.create_all()
    try:
        if dry_run:
            from flows.push_engine import plan_push

            plan = plan_push(store, mapping, mapping_path)
            create_markdown_artifact(key="accord-plan", markdown=plan_markdown(plan), description="Accord push plan")
            return plan.to_json()

        def apply(target: str) -> TargetReport:
            return apply_task.submit(target, settings, mapping).result()

        report = push(store, settings, mapping, mapping_path, apply=apply)
    finally:
        store.dispose()
    create_markdown_artifact(key="accord-plan", markdown=plan_markdown(report.plan), description="Accord push plan")
    create_markdown_artifact(key="accord-push", markdown=push_markdown(report), description="Accord push results")
    for name, target in report.targets.items():
        logger.info("%s: %d delivered, %d failed, %d calls", name, target.delivered, target.failed, target.calls)
    if report.failed:
        raise PushFailedError(f"{report.failed} writes failed and stay queued for the next push (see the artifact)")
    return report.to_json()


__all__ = ["TARGETS", "push_flow"]
