"""The OpenMeter emulator in its own process for benchmarks and fault drills.

``python -m benchmarks.emulator_main --port 18888 [--catalog FILE]``: no access log, warnings
only, loopback only (so its GIL and logging are not the reconciler's)."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from reconciler.emulator.app import create_app
from reconciler.emulator.catalog import parse_catalog_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--catalog", type=Path, default=None)
    args = ap.parse_args()
    doc = parse_catalog_text(args.catalog.read_text()) if args.catalog else None
    uvicorn.run(
        create_app(catalog=doc),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
