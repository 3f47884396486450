"""Run the soak tier: ``python -m tests.soak [options]`` (``scripts/soak`` wraps it).

Each server runs in a child process on 127.0.0.1; every loop is bounded in count and
time. Prints the figures as JSON (``--report FILE`` writes them too) and exits 1 if any
assertion failed, naming each.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import _chaos, _churn, _isolation, _outer, _wire_checks
from ._wire import Server

SERVERS = ("uvicorn-httptools", "hypercorn", "hypercorn-trio")
SCENARIOS = ("chaos", "isolation", "hostile", "faults", "slow", "outer", "shutdown")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument(
        "--chaos-requests",
        type=int,
        default=1000,
        help="requests per chaos round; three rounds (warm-up, two identical) per server",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="chaos client threads")
    parser.add_argument("--isolation-requests", type=int, default=2000)
    parser.add_argument("--fault-repeat", type=int, default=3, help="requests per fault case")
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    parser.add_argument("--slow-normal-requests", type=int, default=100)
    parser.add_argument(
        "--without-hygiene",
        dest="hygiene",
        action="store_false",
        help="on a tree without the header rules of docs/headers.md (hop-by-hop names, "
        "size limits, own framing, stray CancelledError): report those cases, not assert",
    )
    parser.add_argument(
        "--outer-requests",
        type=int,
        default=600,
        help="requests of the outer-cancellation scenario, a share cancelled from outside",
    )
    parser.add_argument(
        "--shutdown-clients", type=int, default=24, help="client threads churning streams"
    )
    parser.add_argument(
        "--shutdown-churn-seconds",
        type=float,
        default=2.0,
        help="seconds of churn before each shutdown notice (one round per notice)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, help="also write the figures to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="soak-"))
    report: dict[str, Any] = {"options": {k: str(v) for k, v in vars(options).items()}}
    failures: list[str] = []
    started = time.monotonic()
    for name in options.servers:
        server = Server(name, logs / f"{name}.log")
        figures: dict[str, Any] = {}
        try:
            for scenario in options.scenarios:
                began = time.monotonic()
                if scenario == "chaos":
                    result = _chaos.run(
                        server, options.chaos_requests, options.seed, options.concurrency
                    )
                elif scenario == "isolation":
                    result = _isolation.run(server, options.isolation_requests, options.seed)
                elif scenario == "hostile":
                    result = _wire_checks.hostile(server, options.hygiene)
                elif scenario == "faults":
                    result = _wire_checks.faults(server, options.fault_repeat, options.hygiene)
                elif scenario == "outer":
                    result = _outer.run(
                        server, options.outer_requests, options.seed, options.concurrency
                    )
                elif scenario == "shutdown":  # on servers of its own: a notice is for good
                    result = _churn.run(
                        name,
                        logs,
                        options.seed,
                        options.shutdown_clients,
                        options.shutdown_churn_seconds,
                    )
                else:
                    result = _wire_checks.slow_reader(
                        server, options.slow_seconds, options.slow_normal_requests
                    )
                figures[scenario], failed = result
                failures += [f"{name} {scenario}: {failure}" for failure in failed]
                print(
                    f"{name} {scenario}: {len(failed)} failures, {time.monotonic() - began:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            server.stop()
        report[name] = figures
    report["seconds"] = round(time.monotonic() - started, 1)
    report["failures"] = failures
    text = json.dumps(report, indent=2)
    print(text)
    if options.report is not None:
        options.report.write_text(text + "\n")
    print(f"server logs: {logs}", file=sys.stderr)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"soak: {len(failures)} failures in {report['seconds']}s", file=sys.stderr, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
