"""The inference lane: on one worker host, one job's model compute at a time.

A worker that runs two jobs at once (`queue.worker_concurrency` 2, two processes) overlaps
what is not model compute: the next job loads and preprocesses its series while this one's
models run, and this job encodes and checks its results while the next one's run. Two jobs'
models never run at once, so the job ahead keeps the cores its backend was given and is not
slowed; what overlaps must fit in the cores the backend leaves spare (ONNX Runtime's threads
below the host's cores, or every core when a Triton server does the compute).

A job takes the lane at its first model call, not before, and gives it back when its
pipeline has run: a lock on a file the host's workers share (`flock`, released by the
kernel if the process dies).
"""

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray

from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import InferenceBackend, ModelMetadata


def default_lane_path() -> Path:
    """One lane per host and user: every worker there shares its cores."""
    return Path(tempfile.gettempdir()) / f"appliance-inference-lane-{os.getuid()}"


class InferenceLane:
    def __init__(self, path: Path) -> None:
        self._path = path

    @contextmanager
    def section(self, backend: InferenceBackend) -> Iterator["LanedBackend"]:
        """`backend` as the pipeline of one series sees it: its first model call waits for
        the lane and holds it until the section ends."""
        laned = LanedBackend(backend, self._path)
        try:
            yield laned
        finally:
            laned.release()


class LanedBackend:
    """A backend whose first `infer` takes the lane; `waited` is how long that took."""

    def __init__(self, backend: InferenceBackend, path: Path) -> None:
        self._backend = backend
        self._path = path
        self._held: IO[bytes] | None = None
        self.waited = 0.0

    def ready(self, model: ModelRef) -> bool:
        return self._backend.ready(model)

    def metadata(self, model: ModelRef) -> ModelMetadata:
        return self._backend.metadata(model)

    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        if self._held is None:
            started = time.perf_counter()
            # not through a link someone else put at the path
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
            handle = os.fdopen(os.open(self._path, flags, 0o600), "ab")
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = handle
            self.waited = time.perf_counter() - started
        return self._backend.infer(model, batch)

    def release(self) -> None:
        if self._held is not None:
            fcntl.flock(self._held, fcntl.LOCK_UN)
            self._held.close()
            self._held = None
