"""Moving the sandbox world on: the shared vocabulary of changes.

Each emulator's store implements ``mutate`` for its own objects; ``Sandbox.mutate`` runs a round
across all three. Within one round every change of an API carries the same timestamp (ties), and
a share of them is *late*: stamped now but invisible to reads until the next round releases it,
as a long transaction that commits after a poller has moved its cursor past its timestamp.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

ChangeKind = Literal["create", "update", "delete", "hard_delete", "undelete", "cancel"]


@dataclass(frozen=True)
class Change:
    api: str  # "salesforce" | "jira" | "google_calendar"
    kind: ChangeKind
    object: str  # "Contact", "issue", "event", ...
    id: str  # the API's id of the record
    stamp: datetime  # the record's new modification timestamp
    late: bool = False  # invisible until the next round releases it
    detail: str = ""  # what changed, e.g. "status In Progress -> Done" (no contact data)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stamp"] = self.stamp.isoformat()
        return data


class MutableStore(Protocol):
    def mutate(self, rng: random.Random, count: int, stamp: datetime, *, late_share: float) -> list[Change]:
        """Apply ``count`` random changes stamped ``stamp``; a ``late_share`` of them stays hidden."""
        ...

    def release_pending(self) -> list[Change]:
        """Make the hidden (late) changes of earlier rounds visible, keeping their old stamps."""
        ...

    def counts(self) -> dict[str, int]: ...
