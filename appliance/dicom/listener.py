"""The DICOM listener: Verification and Storage SCP (PS3.4 Annexes A and B) on pynetdicom.

Acknowledgement discipline: a C-STORE gets Success only after the spool has made the bytes
durable and the ledger has committed the instance's rows; any failure on that path answers a
failure status (Out of Resources when the sender should retry), never a silent success.
"""

import hashlib
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from appliance.dicom.parse import InvalidInstance, parse_instance
from appliance.dicom.sop_classes import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from appliance.dicom.spool import Spool, SpoolFull, encode_file_meta
from appliance.dicom.status import RejectResult, RejectSource, StoreStatus, UserRejectReason
from appliance.domain.ingest import (
    Admission,
    AssociationPeer,
    LedgerUnavailable,
    StoredFile,
)
from appliance.domain.instance import InstanceRecord
from appliance.domain.policy import AssociationPolicy, DuplicatePolicy, RefusalReason

LOG = logging.getLogger(__name__)

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


@dataclass
class _AssociationState:
    id: int
    peer: AssociationPeer
    stored: int = 0
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY per connection and optional SO_REUSEPORT.

    Without TCP_NODELAY, Nagle's algorithm holds back each small C-STORE response for about
    40 ms; SO_REUSEPORT lets several listener processes share one port.
    """

    def __init__(
        self,
        *args: Any,
        reuse_port: bool,
        handshake_timeout: float,
        on_tls_refused: Callable[[str, str], None],
        **kwargs: Any,
    ) -> None:
        self.reuse_port = reuse_port
        self.handshake_timeout = handshake_timeout
        self.on_tls_refused = on_tls_refused
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        assert self.socket is not None
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def shutdown(self) -> None:
        """Stop accepting, close the socket and abort associations still open."""
        socketserver.TCPServer.shutdown(self)
        self.server_close()
        for association in self.active_associations:
            association.abort()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            client.settimeout(self.handshake_timeout)  # a silent client must not stall accept
            try:
                client = self.ssl_context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                client.close()
                self.on_tls_refused(str(address[0]), f"TLS handshake failed: {exc}")
                raise
            client.settimeout(None)
        return client, address


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
        self._states: dict[int, _AssociationState] = {}
        self._states_lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("listener is not started")
        return int(self._server.server_address[1])

    def _application_entity(self) -> AE:
        _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's own handlers can print datasets
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=self._options.policy.called_ae_title)
        ae.maximum_pdu_size = 0
        ae.maximum_associations = self._options.max_associations
        ae.acse_timeout = self._options.acse_timeout
        ae.dimse_timeout = self._options.dimse_timeout
        ae.network_timeout = self._options.network_timeout
        ae.require_called_aet = False  # checked by the policy, with an audit event
        contexts = [build_context(Verification, TRANSFER_SYNTAXES[:4])]
        contexts += [build_context(uid, TRANSFER_SYNTAXES) for uid in self._options.sop_classes]
        ae.supported_contexts = contexts
        return ae

    def start(self) -> None:
        """Bind and serve in background threads."""
        ae = self._application_entity()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_ended, ["released"]),
            (evt.EVT_ABORTED, self._on_ended, ["aborted"]),
            (evt.EVT_CONN_CLOSE, self._on_ended, ["connection closed"]),
        ]
        server = cast(
            _Server,
            ae.make_server(
                (self._options.host, self._options.port),
                ssl_context=self._options.ssl_context,
                evt_handlers=handlers,
                server_class=_Server,
                reuse_port=self._options.reuse_port,
                handshake_timeout=self._options.acse_timeout,
                on_tls_refused=self._on_tls_refused,
            ),
        )
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        LOG.info(
            "listening on %s:%d as %s",
            self._options.host,
            self.port,
            self._options.policy.called_ae_title,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _peer(self, assoc: Association) -> AssociationPeer:
        requestor = assoc.requestor
        primitive = requestor.primitive
        calling = primitive.calling_ae_title if primitive else requestor.ae_title
        called = primitive.called_ae_title if primitive else ""
        return AssociationPeer(
            calling_ae=str(calling).strip(),
            called_ae=str(called).strip(),
            host=str(requestor.address),
            port=int(requestor.port),
            tls=self._options.ssl_context is not None,
        )

    def _on_tls_refused(self, host: str, reason: str) -> None:
        LOG.warning("refused connection from %s: %s", host, reason)
        peer = AssociationPeer(calling_ae="", called_ae="", host=host, port=0, tls=True)
        try:
            self._ledger.association_refused(peer, reason, self._clock())
        except LedgerUnavailable:
            LOG.error("could not record refused TLS connection from %s", host)

    def _on_requested(self, event: Event) -> None:
        peer = self._peer(event.assoc)
        refusal = self._options.policy.refusal(peer.calling_ae, peer.called_ae, peer.host)
        if refusal is None:
            return
        LOG.warning("refused association from %s@%s: %s", peer.calling_ae, peer.host, refusal)
        try:
            self._ledger.association_refused(peer, refusal.value, self._clock())
        except LedgerUnavailable:
            LOG.error("could not record refused association from %s", peer.host)
        event.assoc.acse.send_reject(
            RejectResult.PERMANENT, RejectSource.SERVICE_USER, _REFUSAL_DIAGNOSTICS[refusal]
        )
        event.assoc.kill()  # waits until the A-ASSOCIATE-RJ is on the wire, as pynetdicom does

    def _on_accepted(self, event: Event) -> None:
        peer = self._peer(event.assoc)
        now = self._clock()
        try:
            association_id = self._ledger.association_started(peer, now)
        except LedgerUnavailable:
            LOG.error("database unavailable: aborting association from %s", peer.host)
            event.assoc.abort()
            return
        with self._states_lock:
            self._states[id(event.assoc)] = _AssociationState(association_id, peer)
        refused = [
            "presentation context refused: "
            + STORAGE_SOP_CLASSES.get(str(c.abstract_syntax), str(c.abstract_syntax))
            for c in event.assoc.rejected_contexts
        ]
        if refused:
            self._ledger.contexts_refused(association_id, peer, refused, now)
        LOG.info("association %d accepted from %s@%s", association_id, peer.calling_ae, peer.host)

    def _on_ended(self, event: Event, outcome: str) -> None:
        with self._states_lock:
            state = self._states.pop(id(event.assoc), None)
        if state is None:
            return
        try:
            self._ledger.association_ended(
                state.id, state.peer, outcome, state.stored, state.failed, self._clock()
            )
        except LedgerUnavailable:
            LOG.error("could not record end of association %d", state.id)
        LOG.info(
            "association %d %s: %d stored, %d failed", state.id, outcome, state.stored, state.failed
        )

    def _on_store(self, event: Event) -> int:
        with self._states_lock:
            state = self._states.get(id(event.assoc))
        if state is None:  # not accepted through _on_accepted; never store unaccounted
            return StoreStatus.PROCESSING_FAILURE
        status = self._store(event, state)
        with state.lock:
            if status == StoreStatus.SUCCESS:
                state.stored += 1
            else:
                state.failed += 1
        return status

    def _reject(
        self,
        state: _AssociationState,
        reason: str,
        status: StoreStatus,
        sop_instance_uid: str | None = None,
        study_instance_uid: str | None = None,
    ) -> StoreStatus:
        LOG.warning("association %d: instance refused (0x%04X): %s", state.id, status, reason)
        try:
            self._ledger.instance_rejected(
                state.id, state.peer, sop_instance_uid, study_instance_uid, reason, self._clock()
            )
        except LedgerUnavailable:
            LOG.error("association %d: could not record refused instance", state.id)
        return status

    def _store(self, event: Event, state: _AssociationState) -> StoreStatus:
        request = event.request
        assert isinstance(request, C_STORE)
        encoded = request.DataSet.getvalue() if request.DataSet is not None else b""
        requested_uid = str(request.AffectedSOPInstanceUID or "") or None
        try:
            record = parse_instance(
                encoded,
                str(event.context.transfer_syntax),
                str(request.AffectedSOPClassUID),
                str(request.AffectedSOPInstanceUID),
            )
        except InvalidInstance as exc:
            return self._reject(state, exc.reason, exc.status, requested_uid)

        def refuse(reason: str, status: StoreStatus) -> StoreStatus:
            return self._reject(
                state, reason, status, record.sop_instance_uid, record.study_instance_uid
            )

        try:
            admission = self._ledger.admission(record)
        except LedgerUnavailable as exc:
            return refuse(f"database unavailable: {exc}", StoreStatus.OUT_OF_RESOURCES)
        if admission.conflict:
            return refuse(admission.conflict, StoreStatus.CANNOT_UNDERSTAND)
        if admission.known is not None and self._options.duplicates is DuplicatePolicy.KEEP_FIRST:
            identical = hashlib.sha256(encoded).hexdigest() == admission.known.sha256
            try:
                self._ledger.instance_duplicate(
                    state.id, state.peer, record, identical, self._clock()
                )
            except LedgerUnavailable as exc:
                return refuse(f"database unavailable: {exc}", StoreStatus.OUT_OF_RESOURCES)
            return StoreStatus.SUCCESS

        try:
            stored = self._spool.store(
                record, encode_file_meta(record, state.peer.calling_ae), encoded
            )
        except SpoolFull as exc:
            return refuse(str(exc), StoreStatus.OUT_OF_RESOURCES)
        except OSError as exc:
            return refuse(f"spool write failed: {exc.strerror}", StoreStatus.OUT_OF_RESOURCES)

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
            return refuse(f"database unavailable: {exc}", StoreStatus.OUT_OF_RESOURCES)
        return StoreStatus.SUCCESS
