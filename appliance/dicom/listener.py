"""The DICOM listener: Verification and Storage SCP (PS3.4 Annexes A and B).

Acknowledgement discipline: a C-STORE gets Success only after the spool has made the bytes
durable and the ledger has committed the instance's rows; any failure on that path answers a
failure status (Out of Resources when the sender should retry), never a silent success.

Each association runs in its own thread (`acceptor`): pynetdicom negotiates, and the data phase
is read and answered directly, so one association is limited by the durable writes rather than
by a general-purpose message loop. Several listener processes can share the port.

Hostile clients are assumed on the port. A connection is admitted before a byte of it is read:
a host no trusted peer calls from is refused at once where every peer names its hosts, each
host has a cap on open connections, and hosts not known to be trusted share a bounded number
of negotiation slots, so they can never take the trusted peers'. The TLS handshake and the
association request together must finish within the ACSE timeout (the ARTIM timer), however
slowly the bytes trickle. The concurrent-association limit counts only associations accepted
by the policy. Refusals before an association exists are audited at most once a minute per
host and reason, the next row counting the ones in between, so a flood cannot fill the table.
"""

import contextlib
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext, build_context

from appliance.dicom import upper_layer as ul
from appliance.dicom.acceptor import (
    MAX_DATA_SET_BYTES,
    DataSetLimits,
    DimseTimeout,
    Negotiated,
    StoreRequest,
    Timeouts,
    accept,
    read_request,
    serve,
)
from appliance.dicom.association import APPLICATION_CONTEXT_NAME
from appliance.dicom.parse import InvalidInstance, parse_instance
from appliance.dicom.sop_classes import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION
from appliance.dicom.spool import Spool, SpoolFull, encode_file_meta
from appliance.dicom.upper_layer import (
    ProviderRejectReason,
    RejectResult,
    RejectSource,
    UserRejectReason,
)
from appliance.domain.ingest import (
    RELEASED,
    Admission,
    AssociationPeer,
    LedgerUnavailable,
    StoredFile,
)
from appliance.domain.instance import InstanceRecord
from appliance.domain.policy import (
    AssociationPolicy,
    DuplicatePolicy,
    RefusalReason,
    SourceRateLimit,
)
from appliance.domain.status import Status

LOG = logging.getLogger(__name__)
LISTEN_BACKLOG = 128
ACCEPT_RETRY_SECONDS = 0.1
ACCEPT_WAKE_SECONDS = 1.0  # the accept loop's heartbeat: it wakes at least this often
ALIVE_WITHIN_SECONDS = 5.0  # a loop silent longer than this is dead (`Listener.alive`)
DEADLINE_CHECK_SECONDS = 0.2
# A negotiating read's own timeout, beyond the ARTIM deadline that ends it first.
READ_TIMEOUT_MARGIN_SECONDS = 1.0
AUDIT_WINDOW_SECONDS = 60.0
TOO_MANY_ASSOCIATIONS = "too many concurrent associations"
# The answer to a sender over a limit (concurrent associations, or its host's rate): try later.
LOCAL_LIMIT_EXCEEDED = ul.associate_rj(
    RejectResult.TRANSIENT,
    RejectSource.SERVICE_PROVIDER_PRESENTATION,
    ProviderRejectReason.LOCAL_LIMIT_EXCEEDED,
)

_REFUSAL_DIAGNOSTICS = {
    RefusalReason.CALLED_AE_NOT_RECOGNISED: UserRejectReason.CALLED_AE_TITLE_NOT_RECOGNISED,
    RefusalReason.CALLING_AE_NOT_RECOGNISED: UserRejectReason.CALLING_AE_TITLE_NOT_RECOGNISED,
    RefusalReason.HOST_NOT_ALLOWED: UserRejectReason.CALLING_AE_TITLE_NOT_RECOGNISED,
}


class IngestLedger(Protocol):
    """Where the listener records associations and instances (the audit database)."""

    def association_started(self, peer: AssociationPeer, at: datetime) -> int: ...
    def association_refused(self, peer: AssociationPeer, reason: str, at: datetime) -> None: ...
    def contexts_refused(
        self, association_id: int, peer: AssociationPeer, sop_classes: list[str], at: datetime
    ) -> None: ...
    def association_ended(
        self,
        association_id: int,
        peer: AssociationPeer,
        outcome: str,
        stored: int,
        failed: int,
        at: datetime,
    ) -> None: ...
    def admission(self, record: InstanceRecord) -> Admission: ...
    def instance_stored(
        self,
        association_id: int,
        peer: AssociationPeer,
        record: InstanceRecord,
        stored: StoredFile,
        at: datetime,
        first_of_series: bool,
    ) -> None: ...
    def instance_duplicate(
        self,
        association_id: int,
        peer: AssociationPeer,
        record: InstanceRecord,
        identical: bool,
        at: datetime,
    ) -> None: ...
    def instance_rejected(
        self,
        association_id: int,
        peer: AssociationPeer,
        sop_instance_uid: str | None,
        study_instance_uid: str | None,
        reason: str,
        at: datetime,
    ) -> None: ...


@dataclass(frozen=True)
class ListenerOptions:
    host: str
    port: int
    policy: AssociationPolicy
    max_associations: int = 16
    duplicates: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    sop_classes: tuple[str, ...] = tuple(STORAGE_SOP_CLASSES)
    ssl_context: ssl.SSLContext | None = None
    reuse_port: bool = False
    rate_limit: SourceRateLimit | None = None
    max_connections_per_host: int = 16
    max_negotiating: int = 32  # connections from hosts not known to be trusted, not yet accepted
    max_instance_bytes: int = MAX_DATA_SET_BYTES


@dataclass
class _AssociationState:
    id: int
    peer: AssociationPeer
    stored: int = 0
    failed: int = 0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _AuditRate:
    """Which refusals get an audit row: the first per host and reason in each window; the
    others are counted, and the next row says how many there were. Bounded in hosts."""

    def __init__(self, window: float = AUDIT_WINDOW_SECONDS, max_keys: int = 4096) -> None:
        self._window = window
        self._max_keys = max_keys
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (row at, skipped)

    def take(self, host: str, reason: str, now: float) -> int | None:
        """None: skip this one; else write a row, saying how many were skipped before it."""
        key = (host, reason)
        at, skipped = self._seen.get(key, (-self._window, 0))
        if now - at < self._window:
            self._seen[key] = (at, skipped + 1)
            return None
        if len(self._seen) >= self._max_keys:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self._window}
        self._seen[key] = (now, 0)
        return skipped


class _Deadlines:
    """The ARTIM timer for every connection still negotiating: one thread shuts down each
    socket whose deadline has passed, which ends any read it is blocked in. A connection can
    also be cut short at once (`expire`); either way `clear` then says why."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._due: dict[socket.socket, float] = {}
        self._why: dict[socket.socket, str] = {}
        self._lock = threading.Lock()

    def set(self, connection: socket.socket) -> None:
        with self._lock:
            self._due[connection] = time.monotonic() + self._seconds

    def clear(self, connection: socket.socket) -> str | None:
        """Stop the timer; why the connection was cut short, if it was."""
        with self._lock:
            self._due.pop(connection, None)
            return self._why.pop(connection, None)

    def expire(self, connection: socket.socket, why: str) -> None:
        with self._lock:
            if self._due.pop(connection, None) is None:
                return  # negotiated meanwhile, or gone
            self._why[connection] = why
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)

    def run(self, stopping: threading.Event) -> None:
        late_by = f"association request not complete within {self._seconds:g} s"
        while not stopping.wait(DEADLINE_CHECK_SECONDS):
            now = time.monotonic()
            with self._lock:
                late = [c for c, due in self._due.items() if due <= now]
            for connection in late:
                self.expire(connection, late_by)


def supported_contexts(sop_classes: tuple[str, ...]) -> list[PresentationContext]:
    contexts = [build_context(VERIFICATION, TRANSFER_SYNTAXES[:4])]
    contexts += [build_context(uid, TRANSFER_SYNTAXES) for uid in sop_classes]
    for context_id, context in enumerate(contexts, start=1):
        context.context_id = 2 * context_id - 1
    return contexts


class Listener:
    """A running Storage SCP bound to the spool and the ledger."""

    def __init__(
        self,
        options: ListenerOptions,
        spool: Spool,
        ledger: IngestLedger,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._options = options
        self._spool = spool
        self._ledger = ledger
        self._clock = clock
        self._contexts = supported_contexts(options.sop_classes)
        self._socket: socket.socket | None = None
        # Admitted connections: their host, and since when they hold a negotiating slot.
        self._connections: dict[socket.socket, tuple[str, float | None]] = {}
        self._by_host: Counter[str] = Counter()  # open connections per host
        self._negotiating = 0  # of hosts not known to be trusted, not yet accepted
        self._associations = 0  # accepted by the policy and not yet ended
        self._accepted: set[socket.socket] = set()  # their connections
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._deadlines = _Deadlines(options.acse_timeout)
        self._audit_rate = _AuditRate()
        self._accepting: threading.Thread | None = None
        self._beat = time.monotonic()

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("listener is not started")
        return int(self._socket.getsockname()[1])

    def start(self) -> None:
        """Bind and serve in background threads."""
        family = socket.AF_INET6 if ":" in self._options.host else socket.AF_INET
        server = socket.socket(family, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self._options.reuse_port:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        server.bind((self._options.host, self._options.port))
        server.listen(LISTEN_BACKLOG)
        server.settimeout(ACCEPT_WAKE_SECONDS)
        self._socket = server
        self._accepting = threading.Thread(
            target=self._accept_loop, name="dicom-accept", daemon=True
        )
        self._accepting.start()
        threading.Thread(
            target=self._deadlines.run, args=(self._stopping,), name="dicom-artim", daemon=True
        ).start()
        LOG.info(
            "listening on %s:%d as %s",
            self._options.host,
            self.port,
            self._options.policy.called_ae_title,
        )

    def alive(self) -> bool:
        """Whether the accept loop runs and has woken lately: a listener that cannot accept
        is not one to call ready."""
        return (
            self._accepting is not None
            and self._accepting.is_alive()
            and time.monotonic() - self._beat < ALIVE_WITHIN_SECONDS
        )

    def stop(self) -> None:
        """Stop accepting and abort the associations still open."""
        self._stopping.set()
        if self._socket is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                self._socket.shutdown(socket.SHUT_RDWR)
            self._socket.close()
        with self._lock:
            for connection in list(self._connections):
                try:
                    connection.sendall(ul.abort(ul.AbortSource.SERVICE_USER))
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept_loop(self) -> None:
        """Accept until stopped; whatever goes wrong with one connection refuses that one
        and the loop carries on."""
        assert self._socket is not None
        while not self._stopping.is_set():
            self._beat = time.monotonic()
            try:
                connection, address = self._socket.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                LOG.error("accept failed: %s", exc)  # out of file descriptors, for one
                time.sleep(ACCEPT_RETRY_SECONDS)
                continue
            try:
                self._admit(connection, (str(address[0]), int(address[1])))
            except Exception:
                LOG.exception("connection from %s could not be handled", address[0])
                with contextlib.suppress(OSError):
                    connection.close()

    def _admit(self, connection: socket.socket, address: tuple[str, int]) -> None:
        """Admit a new connection to a thread of its own, or refuse it, before reading it."""
        host = address[0]
        known = self._options.policy.host_known(host)
        oldest = None
        with self._lock:
            if known is False:
                refusal: str | None = RefusalReason.HOST_NOT_TRUSTED.value
            elif self._by_host[host] >= self._options.max_connections_per_host:
                refusal = RefusalReason.HOST_CONNECTIONS.value
            else:
                refusal = None
                if known is None and self._negotiating >= self._options.max_negotiating:
                    oldest = self._oldest_negotiating()
                self._connections[connection] = (host, time.monotonic() if known is None else None)
                self._by_host[host] += 1
                self._negotiating += known is None
        if refusal is not None:
            self._refuse_early(connection, address, refusal)
            return
        if oldest is not None:  # the slowest negotiation gives way: a real sender is quick
            self._deadlines.expire(oldest, RefusalReason.NEGOTIATING.value)
        self._deadlines.set(connection)
        # Without TCP_NODELAY, Nagle's algorithm holds each small response back ~40 ms.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            threading.Thread(
                target=self._run_connection,
                args=(connection, address),
                name=f"association-{host}:{address[1]}",
                daemon=True,
            ).start()
        except RuntimeError as exc:  # no thread to be had: this connection is refused
            self._deadlines.clear(connection)
            self._let_go(connection)
            self._refuse_early(connection, address, f"no thread for the association: {exc}")

    def _oldest_negotiating(self) -> socket.socket:
        """The connection negotiating longest (under the lock); its slot passes on now."""
        oldest = min(
            (c for c, (_, since) in self._connections.items() if since is not None),
            key=lambda c: self._connections[c][1] or 0.0,
        )
        self._negotiated(oldest, locked=True)
        return oldest

    def _negotiated(self, connection: socket.socket, locked: bool = False) -> None:
        """The connection no longer holds a negotiating slot: its association was accepted,
        or it gave way to a newer connection."""
        with contextlib.nullcontext() if locked else self._lock:
            held = self._connections.get(connection)
            if held is not None and held[1] is not None:
                self._connections[connection] = (held[0], None)
                self._negotiating -= 1

    def _let_go(self, connection: socket.socket) -> None:
        """Free an admitted connection's slots, its association's too (once; later calls do
        nothing)."""
        with self._lock:
            if connection in self._accepted:
                self._accepted.discard(connection)
                self._associations -= 1
            held = self._connections.pop(connection, None)
            if held is None:
                return
            host, since = held
            self._by_host[host] -= 1
            if self._by_host[host] <= 0:
                del self._by_host[host]
            self._negotiating -= since is not None

    def _refuse_early(self, connection: socket.socket, address: tuple[str, int], why: str) -> None:
        """Refuse a connection before its association request is read: transient, so a
        trusted sender caught in a crowd tries again; audited at the aggregate rate."""
        with contextlib.suppress(OSError):
            connection.settimeout(1.0)
            connection.sendall(LOCAL_LIMIT_EXCEEDED)
        with contextlib.suppress(OSError):
            connection.close()
        self._refused(AssociationPeer("", "", address[0], address[1], False), why, aggregate=True)

    def _run_connection(self, connection: socket.socket, address: tuple[str, int]) -> None:
        secured: socket.socket | None = None
        try:
            secured = self._secure(connection, address)
            if secured is not None:
                self._associate(secured, address, connection)
        except Exception:  # a bug costs this connection, recorded, and nothing more
            LOG.exception("connection from %s failed", address[0])
        finally:
            self._deadlines.clear(connection)
            self._let_go(connection)
            with contextlib.suppress(OSError):
                (secured or connection).close()

    def _secure(self, connection: socket.socket, address: tuple[str, int]) -> socket.socket | None:
        """Wrap in TLS when configured; a failed handshake is refused and audited."""
        context = self._options.ssl_context
        if context is None:
            return connection
        connection.settimeout(self._options.acse_timeout + READ_TIMEOUT_MARGIN_SECONDS)
        try:
            return context.wrap_socket(connection, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            connection.close()
            cut = self._deadlines.clear(connection)
            why = f"TLS handshake cut short: {cut}" if cut else f"TLS handshake failed: {exc}"
            self._refused(
                AssociationPeer("", "", address[0], address[1], True), why, aggregate=True
            )
            return None

    def _associate(
        self, connection: socket.socket, address: tuple[str, int], raw: socket.socket
    ) -> None:
        """Negotiate and serve one association (`raw` is the admitted connection, under TLS
        or not)."""
        connection.settimeout(self._options.acse_timeout + READ_TIMEOUT_MARGIN_SECONDS)
        silent = AssociationPeer(
            "", "", address[0], address[1], self._options.ssl_context is not None
        )
        try:
            request = read_request(connection)
        except (ul.PeerClosed, ul.ProtocolError, OSError) as exc:
            cut = self._deadlines.clear(raw)
            if cut:
                self._refused(silent, cut, aggregate=True)
            elif isinstance(exc, ul.PeerClosed):  # a port probe or load-balancer health check
                LOG.debug("connection from %s closed before an association request", address[0])
            else:
                self._refused(silent, f"no valid association request: {exc}", aggregate=True)
                with contextlib.suppress(OSError):
                    connection.sendall(ul.abort(ul.AbortSource.SERVICE_PROVIDER))
            return
        if self._deadlines.clear(raw):  # the request was whole just as the timer fired
            return
        peer = AssociationPeer(
            calling_ae=str(request.calling_ae_title).strip(),
            called_ae=str(request.called_ae_title).strip(),
            host=address[0],
            port=address[1],
            tls=self._options.ssl_context is not None,
        )
        if self._rate_limited(peer):
            connection.sendall(LOCAL_LIMIT_EXCEEDED)
            return
        if str(request.application_context_name) != APPLICATION_CONTEXT_NAME:
            self._refused(peer, "application context name not supported", aggregate=True)
            connection.sendall(
                ul.associate_rj(
                    RejectResult.PERMANENT,
                    RejectSource.SERVICE_USER,
                    UserRejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED,
                )
            )
            return
        refusal = self._options.policy.refusal(peer.calling_ae, peer.called_ae, peer.host)
        if refusal is not None:
            self._refused(peer, refusal.value, aggregate=True)
            connection.sendall(
                ul.associate_rj(
                    RejectResult.PERMANENT, RejectSource.SERVICE_USER, _REFUSAL_DIAGNOSTICS[refusal]
                )
            )
            return
        with self._lock:
            crowded = self._associations >= self._options.max_associations
            if not crowded:
                self._associations += 1
                self._accepted.add(raw)
        if crowded:
            self._refused(peer, TOO_MANY_ASSOCIATIONS)
            connection.sendall(LOCAL_LIMIT_EXCEEDED)
            return
        self._negotiated(raw)
        self._run_association(connection, peer, raw, request)

    def _run_association(
        self,
        connection: socket.socket,
        peer: AssociationPeer,
        raw: socket.socket,
        request: A_ASSOCIATE,
    ) -> None:
        """An association the policy accepted: its record, negotiation and data phase."""
        now = self._clock()
        try:
            association_id = self._ledger.association_started(peer, now)
        except LedgerUnavailable:
            LOG.error("database unavailable: refusing association from %s", peer.host)
            connection.sendall(
                ul.associate_rj(
                    RejectResult.TRANSIENT,
                    RejectSource.SERVICE_PROVIDER_PRESENTATION,
                    ProviderRejectReason.TEMPORARY_CONGESTION,
                )
            )
            return
        negotiated = accept(connection, request, self._contexts)
        state = _AssociationState(association_id, peer)
        self._record_refused_contexts(state, negotiated, now)
        LOG.info("association %d accepted from %s@%s", association_id, peer.calling_ae, peer.host)
        outcome = self._data_phase(connection, negotiated, state)
        self._let_go(raw)  # its slots are free for the sender's next association
        if outcome == RELEASED:
            with contextlib.suppress(OSError):
                connection.sendall(ul.release_rp())
        try:
            self._ledger.association_ended(
                state.id, state.peer, outcome, state.stored, state.failed, self._clock()
            )
        except LedgerUnavailable:
            LOG.error("could not record end of association %d", state.id)
        LOG.info(
            "association %d %s: %d stored, %d failed", state.id, outcome, state.stored, state.failed
        )

    def _rate_limited(self, peer: AssociationPeer) -> bool:
        """Whether `peer`'s host is over its association rate. The first refusal in a row is
        audited; the rest only counted in the log, so a sender in a reconnect loop cannot
        flood the audit table either."""
        limit = self._options.rate_limit
        if limit is None:
            return False
        with self._lock:
            refused = limit.take(peer.host, time.monotonic())
        if refused == 1:
            self._refused(peer, RefusalReason.RATE_LIMITED.value)
        elif refused and refused % 100 == 0:
            LOG.warning("%d associations in a row refused from %s: rate limit", refused, peer.host)
        return refused > 0

    def _data_phase(
        self, connection: socket.socket, negotiated: Negotiated, state: _AssociationState
    ) -> str:
        def on_store(request: StoreRequest) -> Status:
            status = self._store(state, request)
            if status == Status.SUCCESS:
                state.stored += 1
            else:
                state.failed += 1
            return status

        timeouts = Timeouts(self._options.network_timeout, self._options.dimse_timeout)
        try:
            limits = DataSetLimits(
                self._options.max_instance_bytes, spill_directory=self._spool.staging
            )
            return serve(connection, negotiated, on_store, timeouts, limits)
        except ul.ProtocolError as exc:
            LOG.warning("association %d: protocol error: %s", state.id, exc)
            return self._abort(connection, f"aborted: {exc}", exc.reason)
        except DimseTimeout as exc:
            LOG.warning("association %d: %s", state.id, exc)
            return self._abort(connection, "aborted: DIMSE timeout")
        except TimeoutError:
            return self._abort(connection, "aborted: network timeout")
        except (ul.PeerClosed, OSError):
            return "connection closed" if not self._stopping.is_set() else "aborted: shutdown"
        except Exception:  # a bug must cost this association, aborted and recorded, no more
            LOG.exception("association %d: internal error", state.id)
            return self._abort(connection, "aborted: internal error")

    @staticmethod
    def _abort(
        connection: socket.socket,
        outcome: str,
        reason: ul.AbortReason = ul.AbortReason.NOT_SPECIFIED,
    ) -> str:
        """Send the peer an A-ABORT (if it still listens); `outcome`, for the record."""
        with contextlib.suppress(OSError):
            connection.sendall(ul.abort(ul.AbortSource.SERVICE_PROVIDER, reason))
        return outcome

    def _refused(self, peer: AssociationPeer, reason: str, aggregate: bool = False) -> None:
        """Log and audit a refusal; with `aggregate`, at most one row per host and reason a
        minute, which counts the ones skipped before it."""
        if aggregate:
            with self._lock:
                skipped = self._audit_rate.take(peer.host, reason, time.monotonic())
            if skipped is None:
                return
            if skipped:
                reason = f"{reason} (and {skipped} more from this host since the last such row)"
        LOG.warning("refused association from %s@%s: %s", peer.calling_ae, peer.host, reason)
        try:
            self._ledger.association_refused(peer, reason, self._clock())
        except LedgerUnavailable:
            LOG.error("could not record refused association from %s", peer.host)

    def _record_refused_contexts(
        self, state: _AssociationState, negotiated: Negotiated, now: datetime
    ) -> None:
        """One audit row for the association, naming each refused abstract syntax once."""
        refused = dict.fromkeys(
            STORAGE_SOP_CLASSES.get(str(c.abstract_syntax), str(c.abstract_syntax))
            for c in negotiated.rejected
        )
        if not refused:
            return
        try:
            self._ledger.contexts_refused(state.id, state.peer, list(refused), now)
        except LedgerUnavailable:
            LOG.error("association %d: could not record refused contexts", state.id)

    def _reject(
        self,
        state: _AssociationState,
        reason: str,
        status: Status,
        sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
    ) -> Status:
        LOG.warning("association %d: instance refused (0x%04X): %s", state.id, status, reason)
        try:
            self._ledger.instance_rejected(
                state.id, state.peer, sop_instance_uid, study_instance_uid, reason, self._clock()
            )
        except LedgerUnavailable:
            LOG.error("association %d: could not record refused instance", state.id)
        return status

    def _store(self, state: _AssociationState, request: StoreRequest) -> Status:
        sop_instance_uid = request.sop_instance_uid or None
        if request.oversized:
            return self._reject(
                state,
                f"data set of {request.oversized:,} bytes or more: over the "
                f"{self._options.max_instance_bytes:,} bytes the listener takes",
                Status.OUT_OF_RESOURCES,
                sop_instance_uid,
            )
        if request.sop_class_uid != request.context_sop_class_uid:
            return self._reject(
                state,
                f"SOP Class {request.sop_class_uid} sent on a "
                f"{request.context_sop_class_uid} context",
                Status.SOP_CLASS_NOT_SUPPORTED,
                sop_instance_uid,
            )
        try:
            record = parse_instance(
                request.data_set,
                request.transfer_syntax_uid,
                request.sop_class_uid,
                request.sop_instance_uid,
            )
        except InvalidInstance as exc:
            return self._reject(state, exc.reason, exc.status, sop_instance_uid)
        except Exception as exc:  # a parser bug must cost one refusal, not the association
            LOG.exception("association %d: data set could not be parsed", state.id)
            reason = f"data set could not be parsed: {type(exc).__name__}: {exc}"
            return self._reject(state, reason[:500], Status.CANNOT_UNDERSTAND, sop_instance_uid)

        def refuse(reason: str, status: Status) -> Status:
            return self._reject(
                state, reason, status, record.sop_instance_uid, record.study_instance_uid
            )

        try:
            admission = self._ledger.admission(record)
        except LedgerUnavailable as exc:
            return refuse(f"database unavailable: {exc}", Status.OUT_OF_RESOURCES)
        if admission.conflict:
            return refuse(admission.conflict, Status.CANNOT_UNDERSTAND)
        if admission.known is not None and self._options.duplicates is DuplicatePolicy.KEEP_FIRST:
            identical = hashlib.sha256(request.data_set).hexdigest() == admission.known.sha256
            try:
                self._ledger.instance_duplicate(
                    state.id, state.peer, record, identical, self._clock()
                )
            except LedgerUnavailable as exc:
                return refuse(f"database unavailable: {exc}", Status.OUT_OF_RESOURCES)
            return Status.SUCCESS

        try:
            stored = self._spool.store(
                record, encode_file_meta(record, state.peer.calling_ae), request.data_set
            )
        except SpoolFull as exc:
            return refuse(str(exc), Status.OUT_OF_RESOURCES)
        except OSError as exc:
            return refuse(f"spool write failed: {exc.strerror}", Status.OUT_OF_RESOURCES)

        try:
            self._ledger.instance_stored(
                state.id,
                state.peer,
                record,
                stored,
                self._clock(),
                first_of_series=not admission.series_known,
            )
        except LedgerUnavailable as exc:
            if admission.known is None:
                self._spool.discard(stored.path)
            return refuse(f"database unavailable: {exc}", Status.OUT_OF_RESOURCES)
        return Status.SUCCESS
