"""Google Calendar: meetings of your own people's calendars, full sync then syncToken increments."""

from connectors.google_calendar.connector import CalendarConnector
from connectors.google_calendar.writer import CalendarWriter

__all__ = ["CalendarConnector", "CalendarWriter"]
