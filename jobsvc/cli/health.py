"""``jobsvc health``: a health check as an exit code (0 serving, 1 not), for container
HEALTHCHECKs: the gRPC health service, or the sidecar's readiness endpoint."""

from __future__ import annotations

import argparse
from typing import Any

from jobsvc.cli.process import fail


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "health",
        help="exit 0 when the gRPC server (or, with --http, the sidecar) is serving",
        description="Ask the gRPC health service (default localhost:50051) or, with --http, "
        "an HTTP readiness URL such as http://127.0.0.1:8000/readyz; exit 0 when serving.",
    )
    parser.add_argument("--target", default="localhost:50051", help="gRPC host:port")
    parser.add_argument("--http", metavar="URL", help="check this HTTP URL instead")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")


def run(args: argparse.Namespace) -> int:
    if args.http:
        import httpx

        try:
            response = httpx.get(args.http, timeout=args.timeout)
        except httpx.HTTPError as exc:
            return fail("health", f"{args.http}: {exc}")
        return (
            0
            if response.status_code == 200
            else fail("health", f"{args.http}: {response.status_code}")
        )
    from jobsvc.rpc.health import check

    ok, detail = check(args.target, timeout_seconds=args.timeout)
    return 0 if ok else fail("health", f"{args.target}: {detail}")
