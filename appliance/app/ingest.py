"""Ingest: the DICOM listener bound to the durable spool and the ingest ledger.

A C-STORE is acknowledged only once the spool has made its bytes durable and the ledger has
committed its rows (`dicom.listener`); this module turns the settings into that listener.
"""

from collections.abc import Callable

from sqlalchemy import Engine

from appliance.config import Settings
from appliance.dicom.listener import Listener, ListenerOptions
from appliance.dicom.sop_classes import STORAGE_SOP_CLASSES
from appliance.dicom.spool import Spool
from appliance.dicom.tls import server_context
from appliance.domain.policy import AssociationPolicy, SourceRateLimit, TrustedPeer
from appliance.store.ingest_ledger import DatabaseIngestLedger


def listener_options(settings: Settings, reuse_port: bool) -> ListenerOptions:
    listener = settings.listener
    tls = listener.tls
    context = None
    if tls.enabled and tls.certificate and tls.private_key:
        context = server_context(
            tls.certificate, tls.private_key, tls.ca_certificates, tls.require_client_certificate
        )
    return ListenerOptions(
        host=listener.host,
        port=listener.port,
        policy=AssociationPolicy(
            called_ae_title=listener.ae_title,
            peers=tuple(TrustedPeer(p.ae_title, tuple(p.hosts)) for p in listener.peers),
        ),
        max_associations=listener.max_associations,
        max_connections_per_host=listener.max_connections_per_host,
        max_negotiating=listener.max_negotiating,
        max_instance_bytes=listener.max_instance_bytes,
        duplicates=listener.duplicate_policy,
        acse_timeout=listener.acse_timeout,
        dimse_timeout=listener.dimse_timeout,
        network_timeout=listener.network_timeout,
        sop_classes=tuple(dict.fromkeys([*STORAGE_SOP_CLASSES, *listener.extra_sop_classes])),
        ssl_context=context,
        reuse_port=reuse_port,
        rate_limit=SourceRateLimit(
            listener.associations_per_minute_per_host, listener.association_burst_per_host
        )
        if listener.associations_per_minute_per_host
        else None,
    )


def spool(settings: Settings) -> Spool:
    return Spool(settings.spool.path, settings.spool.disk_watermark_percent)


def start_listener(
    settings: Settings,
    engine: Engine,
    reuse_port: bool = False,
    ended: Callable[[], None] | None = None,
) -> Listener:
    """The listener, started; `ended` is told each time an association's end is recorded
    (a sweeper in the same process looks at once for a study its release completes)."""
    listener = Listener(
        listener_options(settings, reuse_port),
        spool(settings),
        DatabaseIngestLedger(engine, ended),
    )
    listener.start()
    return listener
