"""Salesforce: CRM clients, engagements (Opportunities), stakeholders and owners; status write-back."""

from connectors.salesforce.connector import SalesforceConnector

__all__ = ["SalesforceConnector"]
