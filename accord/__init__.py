"""Accord: one picture of every client engagement from the CRM, the work tracker and calendars."""
