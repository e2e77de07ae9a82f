"""``jobsvc health``: a health check as an exit code (0 serving, 1 not, 2 a command line or
setting that cannot be used), for container HEALTHCHECKs: the gRPC health service, or the
sidecar's readiness endpoint.

With no options it checks the server the environment configures, reading the same variables
``jobsvc rpc`` does, so a container's HEALTHCHECK needs no flags: ``JOBSVC_TARGET``, else
``JOBSVC_GRPC_HOST``:``JOBSVC_GRPC_PORT`` (a wildcard host such as 0.0.0.0 is asked on loopback);
TLS when ``JOBSVC_TLS_CA_FILE`` (the roots to trust) or the server's own
``JOBSVC_TLS_CERT_FILE`` is set.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from jobsvc.cli.process import fail

_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "health",
        help="exit 0 when the gRPC server (or, with --http, the sidecar) is serving",
        description="Ask the gRPC health service of the server the environment configures "
        "(JOBSVC_TARGET, else JOBSVC_GRPC_HOST:JOBSVC_GRPC_PORT, default 127.0.0.1:50051; TLS "
        "when JOBSVC_TLS_CA_FILE or JOBSVC_TLS_CERT_FILE is set) or, with --http, an HTTP "
        "readiness URL such as http://127.0.0.1:8000/readyz. Exit 0 when serving, 1 when not "
        "or not reachable, 2 when a file or setting cannot be used.",
    )
    parser.add_argument(
        "--target", help="gRPC host:port (default: $JOBSVC_TARGET, else the server's settings)"
    )
    parser.add_argument(
        "--tls-ca-file",
        metavar="PEM",
        help="use TLS, trusting these roots (default: $JOBSVC_TLS_CA_FILE, else the server's "
        "own $JOBSVC_TLS_CERT_FILE)",
    )
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server's certificate carries, when not the target's host "
        "(default: $JOBSVC_TLS_SERVER_NAME)",
    )
    parser.add_argument("--http", metavar="URL", help="check this HTTP URL instead")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")


def target_of(environ: Mapping[str, str]) -> str:
    """The gRPC address the environment's server listens on, as a client reaches it."""
    explicit = environ.get("JOBSVC_TARGET", "").strip()
    if explicit:
        return explicit
    host = environ.get("JOBSVC_GRPC_HOST", "").strip()
    host = _WILDCARDS.get(host, host)
    port = environ.get("JOBSVC_GRPC_PORT", "").strip() or "50051"
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


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
    env = os.environ
    target = args.target or target_of(env)
    roots_file = (
        args.tls_ca_file
        or env.get("JOBSVC_TLS_CA_FILE", "").strip()
        or env.get("JOBSVC_TLS_CERT_FILE", "").strip()
        or None
    )
    roots = None
    if roots_file is not None:
        try:
            with open(roots_file, "rb") as file:
                roots = file.read()
        except OSError as exc:
            return fail("health", f"cannot read {roots_file}: {exc.strerror or exc}", 2)
    from jobsvc.rpc.health import check

    ok, detail = check(
        target,
        timeout_seconds=args.timeout,
        tls_root_certificates=roots,
        tls_server_name=args.tls_server_name or env.get("JOBSVC_TLS_SERVER_NAME") or None,
    )
    scheme = "TLS" if roots is not None else "plaintext"
    return 0 if ok else fail("health", f"{target} ({scheme}): {detail}")
