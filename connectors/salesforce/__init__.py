"""Salesforce: CRM clients, engagements (Opportunities), stakeholders and owners; status write-back."""

from connectors.salesforce.connector import SalesforceConnector
from connectors.salesforce.writer import SalesforceWriter

__all__ = ["SalesforceConnector", "SalesforceWriter"]
