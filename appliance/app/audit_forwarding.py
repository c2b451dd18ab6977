"""The audit trail sent on to the hospital's audit repository (IHE ATNA): every audit event, in
order, as a DICOM audit message in RFC 5424 syslog over TLS (`domain.atna`). The database stays
the record: what the collector has been sent is a cursor there, so a collector that is down
for a while gets everything when it is back, and nothing twice in the normal run.
"""

import logging
import os
import socket
from datetime import UTC, datetime

from sqlalchemy import Engine

from appliance.config import AuditSettings
from appliance.dicom.tls import client_context
from appliance.domain.atna import audit_message, syslog_frame
from appliance.store.audit_export_ledger import AuditExportLedger

LOG = logging.getLogger(__name__)
BATCH = 500
CONNECT_SECONDS = 10.0


class AuditForwarder:
    def __init__(self, settings: AuditSettings, engine: Engine) -> None:
        assert settings.syslog_host is not None
        self._settings = settings
        self._host = settings.syslog_host
        self._collector = f"syslog-tls://{settings.syslog_host}:{settings.syslog_port}"
        self._ledger = AuditExportLedger(engine)
        self._context = client_context(
            settings.ca_certificates, settings.certificate, settings.private_key
        )

    def forward(self) -> int:
        """Send what the collector has not had yet, a batch at a time; how many were sent.
        Raises OSError (ssl.SSLError included) when the collector cannot be reached or
        trusted; the cursor then stays where it was."""
        sent = 0
        while records := self._ledger.pending(self._collector, BATCH):
            address = (self._host, self._settings.syslog_port)
            with (
                socket.create_connection(address, timeout=CONNECT_SECONDS) as raw,
                self._context.wrap_socket(raw, server_hostname=self._host) as secured,
            ):
                hostname, pid = socket.gethostname(), os.getpid()
                for record in records:
                    body = audit_message(record, self._settings.source_id)
                    secured.sendall(syslog_frame(body, datetime.now(UTC), hostname, pid))
            self._ledger.sent(self._collector, records[-1].id)
            sent += len(records)
        return sent
