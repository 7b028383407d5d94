"""Salesforce REST emulator: an org defined by ``org_definition.yaml``, loaded from a ``World``."""

from sandbox.salesforce.app import SalesforceApp
from sandbox.salesforce.store import SalesforceStore

__all__ = ["SalesforceApp", "SalesforceStore"]
