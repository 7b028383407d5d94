"""Jira Cloud: issues of the engagements' projects (status, due dates, assignees, epics, labels)."""

from connectors.jira.connector import JiraConnector
from connectors.jira.writer import JiraWriter

__all__ = ["JiraConnector", "JiraWriter"]
