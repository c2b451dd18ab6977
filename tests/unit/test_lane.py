"""The inference lane across worker processes: two jobs' models never run at once, what comes
before a job's first model call overlaps the other job's models, and a job that dies gives
the lane back."""

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from appliance.app.lane import InferenceLane
from appliance.domain.pipelines import ModelRef
from appliance.inference.backend import ModelMetadata

MODEL = ModelRef("organ_ct", 1)
SECONDS = 0.4


class SlowBackend:
    """Stands in for a model: each call takes SECONDS and records when it ran."""

    def __init__(self, log: Path) -> None:
        self._log = log

    def ready(self, model: ModelRef) -> bool:
        return True

    def metadata(self, model: ModelRef) -> ModelMetadata:
        raise NotImplementedError

    def infer(self, model: ModelRef, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        started = time.time()
        time.sleep(SECONDS)
        with self._log.open("a") as log:
            log.write(f"{os.getpid()} infer {started} {time.time()}\n")
        return batch


def job(lane_path: Path, log: Path, calls: int) -> None:
    """A job: preparation without the lane, `calls` model calls, then encoding."""
    started = time.time()
    time.sleep(SECONDS)  # loading and preprocessing
    with log.open("a") as out:
        out.write(f"{os.getpid()} prepare {started} {time.time()}\n")
    with InferenceLane(lane_path).section(SlowBackend(log)) as backend:
        for _ in range(calls):
            backend.infer(MODEL, np.zeros(1, np.float32))
            time.sleep(0.05)  # the pipeline's own work between model calls, lane held


def _spans(log: Path) -> dict[tuple[int, str], list[tuple[float, float]]]:
    spans: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for line in log.read_text().splitlines():
        pid, what, start, end = line.split()
        spans.setdefault((int(pid), what), []).append((float(start), float(end)))
    return spans


def test_two_jobs_models_never_overlap_but_preparation_does(tmp_path: Path) -> None:
    lane, log = tmp_path / "lane", tmp_path / "log"
    context = multiprocessing.get_context("spawn")
    first = context.Process(target=job, args=(lane, log, 3))
    first.start()
    time.sleep(SECONDS * 1.5)  # the second job arrives while the first one's models run
    second = context.Process(target=job, args=(lane, log, 3))
    second.start()
    for process in (first, second):
        process.join(30)
        assert process.exitcode == 0
    spans = _spans(log)
    one, two = first.pid, second.pid
    assert one is not None
    assert two is not None
    first_models = spans[(one, "infer")]
    second_models = spans[(two, "infer")]
    assert len(first_models) == len(second_models) == 3
    # every model call of the second job after the last of the first: the lane was held
    # through the pauses between the first job's calls
    assert min(start for start, _ in second_models) >= max(end for _, end in first_models)
    # the second job prepared while the first job's models ran
    (prepared,) = spans[(two, "prepare")]
    assert prepared[0] < max(end for _, end in first_models)
    assert prepared[1] <= min(start for start, _ in second_models)


def test_a_job_that_dies_holding_the_lane_gives_it_back(tmp_path: Path) -> None:
    lane, log = tmp_path / "lane", tmp_path / "log"
    context = multiprocessing.get_context("spawn")
    holder = context.Process(target=job, args=(lane, log, 100))
    holder.start()
    deadline = time.time() + 20
    while not (log.exists() and " infer " in log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    started = time.time()
    job(lane, log, 1)
    assert time.time() - started < SECONDS * 4, "the lane of a killed job was released"
