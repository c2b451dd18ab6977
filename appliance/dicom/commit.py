"""Group commit: one directory fsync and one database transaction for many instances.

Every instance's file is written and fsync'd by its own association thread. The renames into
the spool and the instance rows are then made durable together by one committer thread: it
takes every instance that arrived while the previous group was committing, fsyncs each
directory once, commits all rows in one transaction, and only then wakes the associations to
answer Success. Under one association a group is one instance; under many, the journal commits
per instance fall from three towards one. Nothing is acknowledged before its group commits.
"""

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance.dicom.spool import Placement, Spool
from appliance.domain.ingest import LedgerUnavailable, StoredInstance

MAX_GROUP = 64


class BatchLedger(Protocol):
    def instances_stored(self, entries: Sequence[StoredInstance]) -> None: ...


@dataclass
class _Pending:
    entry: StoredInstance
    directories: tuple[Path, ...]
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class GroupCommit:
    def __init__(self, ledger: BatchLedger) -> None:
        self._ledger = ledger
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def commit(self, entry: StoredInstance, placement: Placement) -> None:
        """Block until `entry` is durable; raises `OSError` or `LedgerUnavailable` if not."""
        pending = _Pending(entry, placement.directories)
        self._queue.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    pending = self._queue.get_nowait()
                except queue.Empty:
                    break
                if pending is None:
                    self._queue.put(None)  # stop after this group
                    break
                group.append(pending)
            self._commit(group)

    def _commit(self, group: list[_Pending]) -> None:
        error: Exception | None = None
        try:
            Spool.sync(directory for pending in group for directory in pending.directories)
            self._ledger.instances_stored([pending.entry for pending in group])
        except (OSError, LedgerUnavailable) as exc:
            error = exc
        for pending in group:
            pending.error = error
            pending.done.set()
