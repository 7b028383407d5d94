"""Connectors: one package per SaaS. Plain Python over the real client libraries; never imports Prefect."""
