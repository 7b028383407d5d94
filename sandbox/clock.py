"""The sandbox's notion of "now".

Real wall-clock time by default, so the real client libraries and Accord's own cursors agree on
what "now" means. Tests may shift it forward (``advance``) to age sessions, sync tokens or the
recycle bin without sleeping. Timestamps are truncated to milliseconds, as all three APIs do.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class Clock:
    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            moment = datetime.now(UTC) + self._offset
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += timedelta(seconds=seconds)
