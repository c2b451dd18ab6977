"""The dashboard's web server (uvicorn) on a thread of its own, beside the other roles."""

import logging
import threading

import uvicorn
from fastapi import FastAPI

LOG = logging.getLogger(__name__)


class DashboardServer:
    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False
        )  # the appliance's own logging
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
