"""Start the app under uvicorn, after the one check that protects a user: no open port without a key."""

from __future__ import annotations

import ipaddress
import os

from stillroom.config import Params
from stillroom.data import Layout


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(params: Params, host: str) -> None:
    """Refuse to start where strangers could spend the teacher key: off loopback, callers must bring our key."""
    settings = params.serve
    key = os.environ.get(settings.api_key_env)
    if not is_loopback(host) and not key:
        raise RuntimeError(
            f"refusing to serve on {host} without an API key: set ${settings.api_key_env} "
            "(callers then send it as `Authorization: Bearer ...`), or bind 127.0.0.1"
        )
    if key and settings.upstream_auth == "caller":
        raise RuntimeError(
            "serve.upstream_auth `caller` passes the caller's Authorization header to the teacher, but with "
            f"${settings.api_key_env} set that header holds the server's own key: use upstream_auth `server`"
        )


def serve(params: Params, layout: Layout, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    from stillroom.serve.app import create_app

    check_binding(params, host)
    os.environ.setdefault("OMP_NUM_THREADS", str(params.serve.torch_threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(params, layout), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
