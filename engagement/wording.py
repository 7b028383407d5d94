"""The wording of status updates and reminders: Jinja2 templates the mapping points at.

Templates run in Jinja's sandbox with strict undefined variables. Values from the org (client
names, summaries) are data passed to the template, never template source, so a client called
``{{ 7*7 }}`` is printed as written. Output is plain text; each writer turns it into its target's
format (ADF paragraphs for Jira) without interpreting markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from engagement.model import Engagement
from engagement.rules import Reminder, StatusUpdate

TEMPLATES = ("status_update.j2", "status_summary.j2", "reminder_subject.j2", "reminder_body.j2")


class WordingError(ValueError):
    """A template is missing or broken: names the file and line."""


class Wording:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        if not directory.is_dir():
            raise WordingError(f"{directory}: the templates directory does not exist")
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(str(directory)),
            undefined=StrictUndefined,
            autoescape=False,  # plain text for Salesforce, Jira (as ADF text nodes) and calendars
            keep_trailing_newline=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        for name in TEMPLATES:
            try:
                self.env.get_template(name)
            except TemplateError as exc:
                line = getattr(exc, "lineno", None)
                raise WordingError(f"{directory / name}:{line or '?'}: {exc.message or exc}") from None

    def _render(self, name: str, **context: Any) -> str:
        try:
            return self.env.get_template(name).render(**context).strip()
        except TemplateError as exc:
            raise WordingError(f"{self.directory / name}: {exc.message or exc}") from None

    def status_comment(self, engagement: Engagement, update: StatusUpdate) -> str:
        return self._render("status_update.j2", engagement=engagement, why=list(update.why))

    def status_summary(self, engagement: Engagement) -> str:
        return " ".join(self._render("status_summary.j2", engagement=engagement).split())

    def reminder(self, engagement: Engagement, reminder: Reminder) -> tuple[str, str]:
        subject = " ".join(self._render("reminder_subject.j2", engagement=engagement, reminder=reminder).split())
        body = self._render("reminder_body.j2", engagement=engagement, reminder=reminder)
        return subject, body


def templates_dir(mapping_path: Path, templates: str) -> Path:
    return (mapping_path.parent / templates).resolve()
