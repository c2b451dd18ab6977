"""The DICOM listener: Verification and Storage SCP (PS3.4 Annexes A and B).

Acknowledgement discipline: a C-STORE gets Success only after the spool has made the bytes
durable and the ledger has committed the instance's rows; any failure on that path answers a
failure status (Out of Resources when the sender should retry), never a silent success.

Each association runs in its own thread (`acceptor`): pynetdicom negotiates, and the data phase
is read and answered directly, so one association is limited by the durable writes rather than
by a general-purpose message loop. Several listener processes can share the port.
"""

import contextlib
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pynetdicom.presentation import PresentationContext, build_context

from appliance.dicom import upper_layer as ul
from appliance.dicom.acceptor import (
    RELEASED,
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
from appliance.domain.ingest import Admission, AssociationPeer, LedgerUnavailable, StoredFile
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
        self, association_id: int, peer: AssociationPeer, reasons: list[str], at: datetime
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


@dataclass
class _AssociationState:
    id: int
    peer: AssociationPeer
    stored: int = 0
    failed: int = 0


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

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
        self._socket = server
        threading.Thread(target=self._accept_loop, name="dicom-accept", daemon=True).start()
        LOG.info(
            "listening on %s:%d as %s",
            self._options.host,
            self.port,
            self._options.policy.called_ae_title,
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
        assert self._socket is not None
        while not self._stopping.is_set():
            try:
                connection, address = self._socket.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                LOG.error("accept failed: %s", exc)  # out of file descriptors, for one
                time.sleep(ACCEPT_RETRY_SECONDS)
                continue
            # Without TCP_NODELAY, Nagle's algorithm holds each small response back ~40 ms.
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(
                target=self._run_connection,
                args=(connection, address),
                name=f"association-{address[0]}:{address[1]}",
                daemon=True,
            ).start()

    def _run_connection(self, connection: socket.socket, address: tuple[str, int]) -> None:
        with self._lock:
            self._connections.add(connection)
            crowded = len(self._connections) > self._options.max_associations
        secured: socket.socket | None = None
        try:
            secured = self._secure(connection, address)
            if secured is not None:
                self._associate(secured, address, crowded)
        finally:
            with self._lock:
                self._connections.discard(connection)
            (secured or connection).close()

    def _secure(self, connection: socket.socket, address: tuple[str, int]) -> socket.socket | None:
        """Wrap in TLS when configured; a failed handshake is refused and audited."""
        context = self._options.ssl_context
        if context is None:
            return connection
        connection.settimeout(self._options.acse_timeout)
        try:
            return context.wrap_socket(connection, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            connection.close()
            self._refused(
                AssociationPeer("", "", address[0], address[1], True),
                f"TLS handshake failed: {exc}",
            )
            return None

    def _associate(
        self, connection: socket.socket, address: tuple[str, int], crowded: bool
    ) -> None:
        connection.settimeout(self._options.acse_timeout)
        try:
            request = read_request(connection)
        except ul.PeerClosed:  # a port probe or load-balancer health check
            LOG.debug("connection from %s closed before an association request", address[0])
            return
        except (ul.ProtocolError, OSError) as exc:
            LOG.warning("no valid association request from %s: %s", address[0], exc)
            with contextlib.suppress(OSError):
                connection.sendall(ul.abort(ul.AbortSource.SERVICE_PROVIDER))
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
            self._refused(peer, "application context name not supported")
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
            self._refused(peer, refusal.value)
            connection.sendall(
                ul.associate_rj(
                    RejectResult.PERMANENT, RejectSource.SERVICE_USER, _REFUSAL_DIAGNOSTICS[refusal]
                )
            )
            return
        if crowded:
            self._refused(peer, TOO_MANY_ASSOCIATIONS)
            connection.sendall(LOCAL_LIMIT_EXCEEDED)
            return
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
        with self._lock:  # the association is over: its slot is free for the sender's next
            self._connections.discard(connection)
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
            return serve(connection, negotiated, on_store, timeouts)
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

    def _refused(self, peer: AssociationPeer, reason: str) -> None:
        LOG.warning("refused association from %s@%s: %s", peer.calling_ae, peer.host, reason)
        try:
            self._ledger.association_refused(peer, reason, self._clock())
        except LedgerUnavailable:
            LOG.error("could not record refused association from %s", peer.host)

    def _record_refused_contexts(
        self, state: _AssociationState, negotiated: Negotiated, now: datetime
    ) -> None:
        reasons = [
            "presentation context refused: "
            + STORAGE_SOP_CLASSES.get(str(c.abstract_syntax), str(c.abstract_syntax))
            for c in negotiated.rejected
        ]
        if not reasons:
            return
        try:
            self._ledger.contexts_refused(state.id, state.peer, reasons, now)
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
