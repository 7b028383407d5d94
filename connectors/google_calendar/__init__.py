"""Google Calendar: meetings of your own people's calendars, full sync then syncToken increments."""

from connectors.google_calendar.connector import CalendarConnector

__all__ = ["CalendarConnector"]
