"""Jira Cloud: issues of the engagements' projects (status, due dates, assignees, epics, labels)."""

from connectors.jira.connector import JiraConnector

__all__ = ["JiraConnector"]
