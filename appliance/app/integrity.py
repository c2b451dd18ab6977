"""Spool integrity: every recorded instance has its file, with the bytes that were received.

Reads the database and the spool together (so it lives beside `runtime`, not in either edge).
It reports three kinds of problem and changes nothing:
- missing: a row whose file is gone;
- corrupted: a file whose data set no longer has the SHA-256 recorded at reception;
- orphans: files with no row, older than a grace period. A crash between the rename into the
  spool and the database commit leaves one; it was never acknowledged.
"""

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, select

from appliance.dicom.spool import data_set_of
from appliance.store.models import Instance

ORPHAN_GRACE = timedelta(hours=1)


@dataclass
class SpoolReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not (self.missing or self.corrupted or self.orphans)


def dataset_sha256(path: Path) -> str:
    """SHA-256 of the data set of a Part 10 file, the part stored exactly as received."""
    return hashlib.sha256(data_set_of(path.read_bytes())).hexdigest()


def _spool_files(root: Path) -> Iterator[Path]:
    for path in root.rglob("*.dcm"):
        if path.relative_to(root).parts[0] != ".incoming":
            yield path


def verify_spool(engine: Engine, root: Path, now: datetime, hashes: bool = True) -> SpoolReport:
    report = SpoolReport()
    with engine.connect() as connection:
        recorded = {
            path: sha for path, sha in connection.execute(select(Instance.path, Instance.sha256))
        }
    for relative, sha256 in recorded.items():
        report.checked += 1
        path = root / relative
        if not path.exists():
            report.missing.append(relative)
        elif hashes and dataset_sha256(path) != sha256:
            report.corrupted.append(relative)
    cutoff = (now - ORPHAN_GRACE).timestamp()
    for path in _spool_files(root):
        relative = str(path.relative_to(root))
        if relative not in recorded and path.stat().st_mtime < cutoff:
            report.orphans.append(relative)
    return report
