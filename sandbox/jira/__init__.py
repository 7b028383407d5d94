"""Jira Cloud REST emulator (v2 and v3): a store loaded from the sandbox world and its HTTP app."""

from sandbox.jira.app import JiraApp
from sandbox.jira.store import JiraStore

__all__ = ["JiraApp", "JiraStore"]
