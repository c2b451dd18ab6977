"""Value types that cross the ingest boundary between the DICOM edge and the database."""

from dataclasses import dataclass

from appliance.domain.uids import Uid

SERIES_CONFLICT = "Series Instance UID already belongs to another study"
RELEASED = "released"  # an association's outcome when its peer released it


@dataclass(frozen=True, slots=True)
class AssociationPeer:
    """The remote end of an association, as seen at A-ASSOCIATE time."""

    calling_ae: str
    called_ae: str
    host: str
    port: int
    tls: bool = False


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An instance made durable in the spool."""

    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class KnownInstance:
    """An already stored instance with the same SOP Instance UID."""

    sop_instance_uid: Uid
    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Admission:
    """What the ledger already knows about an incoming instance."""

    known: KnownInstance | None
    conflict: str | None
    series_known: bool


class LedgerUnavailable(Exception):
    """The ledger could not commit (database down or locked): the sender should retry."""
