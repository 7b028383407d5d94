"""Google Calendar v3 emulator: calendarList, events (list/get/insert/patch/update/delete/instances),
sync and page tokens, batch, OAuth refresh, Google's error bodies. See README.md for what differs
from the real API."""

from sandbox.google_calendar.app import CalendarApp
from sandbox.google_calendar.store import PRINCIPAL, CalendarSettings, CalendarStore, EventQuery

__all__ = ["PRINCIPAL", "CalendarApp", "CalendarSettings", "CalendarStore", "EventQuery"]
