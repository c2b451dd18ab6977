"""The dashboard's web server (uvicorn) on a thread of its own, beside the other roles."""

import logging
import threading
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI

LOG = logging.getLogger(__name__)


class DashboardServer:
    def __init__(
        self, app: FastAPI, host: str, port: int, trusted_proxies: Sequence[str] = ()
    ) -> None:
        # X-Forwarded-* are believed from the configured proxies only (uvicorn's default
        # believes anyone on 127.0.0.1, which is every local user); logging is the appliance's.
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies) or None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dashboard", daemon=True)
        self.address = f"http://{host}:{port}"

    def start(self) -> None:
        self._thread.start()
        LOG.info("dashboard on %s", self.address)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
