"""Benchmarks: what `header_first_stream` costs, against raw ASGI and its peers.

Run ``scripts/bench`` (or ``python -m benchmarks``); it writes ``docs/benchmarks.md`` and
``docs/benchmarks.png``. ``--quick`` runs tiny counts in a few seconds, for the test suite.

Modules: `_apps` (the variants, built the same way for every part), `inprocess` (cost
per chunk and per response, interleaved), `e2e` (uvicorn on loopback), `memory` (RSS per
open stream), `machine` (what ran it), `report` (markdown, PNG and the command line).
"""
