"""Accord's benchmarks: sync and push against the sandbox, measured against the round-trip limit.

``python -m benchmarks.run`` (``make bench``) writes ``benchmarks/results/latest.json`` and ``latest.md``.
"""
