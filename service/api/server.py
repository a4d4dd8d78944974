"""``sku-serve``: run the service with uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import argparse
import logging
import sys

from service.settings import SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sku-serve",
        description="Serve POST /recognize, /healthz, /readyz and /metrics. Configuration comes "
        "from SKU_SERVICE_* environment variables and REDIS_URL (see README).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in containers)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes; each loads its own models (memory × workers)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.api.settings import get_settings

    try:
        get_settings()  # validate before forking workers: one clear message, exit code 2
    except SettingsError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    import uvicorn

    from service.api.protocol import HeaderDeadlineProtocol

    uvicorn.run("service.api.app:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=10, http=HeaderDeadlineProtocol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
