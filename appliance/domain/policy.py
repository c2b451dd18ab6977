"""Association acceptance policy (PS3.8 section 7.1.1.9: A-ASSOCIATE-RJ reasons).

Decides, from the calling and called AE titles and the peer's address, whether an association
may be accepted. The listener turns a refusal into the matching A-ASSOCIATE-RJ.
"""

import ipaddress
from dataclasses import dataclass
from enum import StrEnum


class RefusalReason(StrEnum):
    CALLED_AE_NOT_RECOGNISED = "called AE title not recognised"
    CALLING_AE_NOT_RECOGNISED = "calling AE title not recognised"
    HOST_NOT_ALLOWED = "calling AE title not allowed from this host"


@dataclass(frozen=True, slots=True)
class TrustedPeer:
    """A sender allowed to store. `hosts` empty means any address; entries are IPs or networks."""

    ae_title: str
    hosts: tuple[str, ...] = ()

    def allows_host(self, host: str) -> bool:
        if not self.hosts:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(entry, strict=False) for entry in self.hosts)


@dataclass(frozen=True, slots=True)
class AssociationPolicy:
    called_ae_title: str
    peers: tuple[TrustedPeer, ...]

    def refusal(self, calling_ae: str, called_ae: str, host: str) -> RefusalReason | None:
        """Return why the association must be refused, or None to accept it."""
        if called_ae.strip() != self.called_ae_title:
            return RefusalReason.CALLED_AE_NOT_RECOGNISED
        candidates = [p for p in self.peers if p.ae_title == calling_ae.strip()]
        if not candidates:
            return RefusalReason.CALLING_AE_NOT_RECOGNISED
        if not any(p.allows_host(host) for p in candidates):
            return RefusalReason.HOST_NOT_ALLOWED
        return None


class DuplicatePolicy(StrEnum):
    """What to do when a SOP Instance UID arrives that is already stored."""

    KEEP_FIRST = "keep_first"
    REPLACE = "replace"
