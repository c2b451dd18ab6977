"""Durable storage of received instances as DICOM Part 10 files (PS3.10 section 7).

An instance is durable once: its bytes are written to a temporary file and fsync'd, the file is
renamed to its final name, and the directory is fsync'd. Only then may the listener commit its
database row and acknowledge. The data set bytes are written exactly as received.
"""

import hashlib
import os
import shutil
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.dicom.association import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from appliance.domain.encoding import Encoded
from appliance.domain.ingest import StoredFile
from appliance.domain.instance import InstanceRecord

PREAMBLE = b"\x00" * 128 + b"DICM"
# Patient data: the appliance's user alone reads it, whatever the umask it was started with.
_DIRECTORY_MODE = 0o700
_FILE_MODE = 0o600


_META_GROUP_LENGTH_END = len(PREAMBLE) + 12  # (0002,0000) UL: tag, VR, length, value


def data_set_of(part10: bytes) -> bytes:
    """The data set of a Part 10 file: everything after the File Meta Information, whose
    length is the value of its first element, File Meta Information Group Length."""
    group_length = int.from_bytes(
        part10[_META_GROUP_LENGTH_END - 4 : _META_GROUP_LENGTH_END], "little"
    )
    return part10[_META_GROUP_LENGTH_END + group_length :]


class SpoolFull(OSError):
    """The spool's disk is above its watermark, or out of space."""


@dataclass(frozen=True, slots=True)
class DiskUsage:
    total_bytes: int
    used_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used_bytes / self.total_bytes if self.total_bytes else 100.0


def private_directory(path: Path) -> Path:
    """`path` and any missing parents made, and `path` itself (new or old) left 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=_DIRECTORY_MODE)
    path.chmod(_DIRECTORY_MODE)
    return path


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 section 7.1.2)."""
    if vr in (b"OB", b"UN"):
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_file_meta(record: InstanceRecord, source_ae_title: str) -> bytes:
    """File Meta Information group (0002) of a received instance (PS3.10 section 7.1).

    Encoded by hand: it is written once per received instance, and the fixed layout costs a
    few microseconds where a general-purpose writer costs most of a millisecond.
    """
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _padded(record.sop_class_uid, b"\x00")),
            _element(0x0002, 0x0003, b"UI", _padded(record.sop_instance_uid, b"\x00")),
            _element(0x0002, 0x0010, b"UI", _padded(record.transfer_syntax_uid, b"\x00")),
            _element(0x0002, 0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _element(0x0002, 0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ")),
            _element(0x0002, 0x0016, b"AE", _padded(source_ae_title, b" ")),
        )
    )
    return _element(0x0002, 0x0000, b"UL", struct.pack("<L", len(body))) + body


def write_durably(final: Path, staging: Path, root: Path, parts: Sequence[Encoded]) -> None:
    """Write `parts` to `final` so that a crash leaves either nothing or the whole file: a
    temporary file in `staging` (same file system) is fsync'd and renamed into place, then the
    directory entry is fsync'd, and so are directories created below `root` on the way."""
    temporary = staging / f"{uuid.uuid4().hex}.part"
    try:
        with open(temporary, "xb") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        missing = []
        current = final.parent
        while not current.exists() and current != root:
            missing.append(current)
            current = current.parent
        for directory in reversed(missing):
            directory.mkdir(mode=_DIRECTORY_MODE, exist_ok=True)
        os.replace(temporary, final)
        _fsync_directory(final.parent)
        for directory in missing:
            _fsync_directory(directory.parent)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


class Spool:
    """A directory of received instances, laid out by study, series and instance UID."""

    def __init__(self, root: Path, watermark_percent: float) -> None:
        self.root = root
        self.watermark_percent = watermark_percent
        self._staging = private_directory(private_directory(root) / ".incoming")

    def usage(self) -> DiskUsage:
        usage = shutil.disk_usage(self.root)
        return DiskUsage(usage.total, usage.used)

    def has_room(self) -> bool:
        return self.usage().percent < self.watermark_percent

    def relative_path(self, record: InstanceRecord) -> Path:
        return (
            Path(record.study_instance_uid)
            / record.series_instance_uid
            / f"{record.sop_instance_uid}.dcm"
        )

    @property
    def staging(self) -> Path:
        """Where files are written before they are renamed into place (same file system)."""
        return self._staging

    def store(self, record: InstanceRecord, file_meta: bytes, dataset: Encoded) -> StoredFile:
        """Write the instance durably; an existing file of the same instance is replaced."""
        if not self.has_room():
            raise SpoolFull(f"spool disk above {self.watermark_percent}% watermark")
        relative = self.relative_path(record)
        digest = hashlib.sha256(dataset)
        write_durably(
            self.root / relative, self._staging, self.root, (PREAMBLE, file_meta, dataset)
        )
        size = len(PREAMBLE) + len(file_meta) + len(dataset)
        return StoredFile(path=str(relative), size_bytes=size, sha256=digest.hexdigest())

    def discard(self, relative_path: str) -> None:
        """Remove a stored file whose database row could not be committed."""
        (self.root / relative_path).unlink(missing_ok=True)

    def clear_staging(self) -> int:
        """Remove partial files left by a crash; they were never acknowledged."""
        removed = 0
        for leftover in self._staging.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed
