"""Association acceptance policy (PS3.8 section 7.1.1.9: A-ASSOCIATE-RJ reasons).

Decides, from the calling and called AE titles and the peer's address, whether an association
may be accepted. The listener turns a refusal into the matching A-ASSOCIATE-RJ.
"""

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum


class RefusalReason(StrEnum):
    CALLED_AE_NOT_RECOGNISED = "called AE title not recognised"
    CALLING_AE_NOT_RECOGNISED = "calling AE title not recognised"
    HOST_NOT_ALLOWED = "calling AE title not allowed from this host"
    RATE_LIMITED = "too many associations from this host"
    HOST_NOT_TRUSTED = "no trusted peer calls from this host"
    HOST_CONNECTIONS = "too many open connections from this host"
    NEGOTIATING = "too many associations being negotiated"


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

    def host_known(self, host: str) -> bool | None:
        """Whether a trusted peer may call from `host`, known from the address alone: True or
        False when every peer names its hosts, None when one takes any address (then only
        its AE title, read from the association request, can tell)."""
        if any(not peer.hosts for peer in self.peers):
            return None
        return any(peer.allows_host(host) for peer in self.peers)

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


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float
    refused: int = 0


@dataclass
class SourceRateLimit:
    """A token bucket per source host: `per_minute` new associations a minute on average, at
    most `burst` at once. A misconfigured or hostile sender that reconnects in a loop is
    refused early, before it costs a database row per attempt, while other senders go on.

    Not thread-safe: the listener calls it under its own lock."""

    per_minute: int
    burst: int
    max_hosts: int = 4096
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, host: str, now: float) -> int:
        """0 when `host` may open an association at `now` (seconds, monotonic); otherwise how
        many attempts in a row it has had refused, this one included (1 is the first, which
        is worth an audit row; the rest are the same story)."""
        bucket = self._buckets.get(host)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[host] = _Bucket(float(self.burst), now)
        bucket.tokens = min(
            float(self.burst), bucket.tokens + (now - bucket.at) * self.per_minute / 60.0
        )
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.refused = 0
            return 0
        bucket.refused += 1
        return bucket.refused

    def _forget_idle(self, now: float) -> None:
        """Drop hosts whose bucket has refilled (they would start full anyway), so that many
        distinct sources cannot grow the table without bound."""
        if len(self._buckets) < self.max_hosts:
            return
        refill_seconds = 60.0 * self.burst / self.per_minute
        self._buckets = {
            host: bucket
            for host, bucket in self._buckets.items()
            if now - bucket.at < refill_seconds
        }
