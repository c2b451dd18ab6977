"""The audit trail reaches a hospital's audit repository as IHE ATNA has it: DICOM audit
messages in RFC 5424 syslog over TLS, received here by Debian's rsyslog (imtcp with its GnuTLS
driver) on loopback; each event once, in order; a collector whose certificate the appliance
does not trust gets nothing, and the events wait for it."""

import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import pytest
from sqlalchemy import Engine

from appliance.app.audit_forwarding import AuditForwarder
from appliance.config import AuditSettings
from appliance.domain.accounts import LoginPolicy, Role
from appliance.store.account_ledger import AccountLedger
from tests.support.pki import hospital_pki
from tests.support.services import ON_SQLITE_ONLY, free_port, missing_service
from tests.support.waiting import wait_for

FRAMED = re.compile(
    rb"<110>1 \S+ \S+ appliance \d+ IHE\+RFC-3881 - (<AuditMessage>.*?</AuditMessage>)"
)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    return hospital_pki(tmp_path / "pki", {"collector": "hospital-ca", "impostor": "rogue-ca"})


@contextmanager
def rsyslog(directory: Path, pki: Path, certificate: str) -> Iterator[tuple[int, Path]]:
    """rsyslogd in the foreground, taking TLS syslog on a free port and writing each message
    as it came into a file."""
    if shutil.which("rsyslogd") is None:
        missing_service("rsyslogd (Debian package rsyslog, with rsyslog-gnutls) is not installed")
    port = free_port()
    received = directory / "received.log"
    work = directory / "work"
    work.mkdir()
    config = directory / "rsyslog.conf"
    config.write_text(f"""
global(workDirectory="{work}"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{pki}/hospital-ca.pem"
       DefaultNetstreamDriverCertFile="{pki}/{certificate}.pem"
       DefaultNetstreamDriverKeyFile="{pki}/{certificate}.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
       StreamDriver.AuthMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="asreceived" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{received}" template="asreceived")
""")
    daemon = subprocess.Popen(
        ["rsyslogd", "-n", "-f", str(config), "-i", str(directory / "rsyslogd.pid")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: _listening(port), 20, interval=0.2)
        yield port, received
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def audit_messages(received: Path) -> list[ElementTree.Element]:
    text = received.read_bytes() if received.exists() else b""
    return [ElementTree.fromstring(body) for body in FRAMED.findall(text)]


def login_attempts(engine: Engine) -> None:
    """Two audited events: a failed login from an address, then a successful one."""
    accounts = AccountLedger(engine)
    accounts.add("ada", "correct horse battery", Role.ADMIN, datetime.now(UTC), "test")
    accounts.login("ada", "not the password", datetime.now(UTC), LoginPolicy(), "192.0.2.7")
    accounts.login("ada", "correct horse battery", datetime.now(UTC), LoginPolicy(), "192.0.2.7")


def test_audit_events_reach_the_repository_once_each_over_tls(
    engine: Engine, pki: Path, tmp_path: Path
) -> None:
    login_attempts(engine)
    with rsyslog(tmp_path, pki, "collector") as (port, received):
        settings = AuditSettings(
            syslog_host="localhost", syslog_port=port, ca_certificates=pki / "hospital-ca.pem"
        )
        forwarder = AuditForwarder(settings, engine)
        assert forwarder.forward() == 3  # account created, login refused, login
        wait_for(lambda: len(audit_messages(received)) == 3, 20)
        assert forwarder.forward() == 0  # nothing twice
    messages = audit_messages(received)
    codes = [m.find("EventIdentification/EventID").get("csd-code") for m in messages]  # type: ignore[union-attr]
    assert codes == ["110136", "110114", "110114"]
    refused = messages[1]
    assert refused.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    participant = refused.find("ActiveParticipant")
    assert participant is not None
    assert participant.get("UserID") == "ada"
    assert participant.get("NetworkAccessPointID") == "192.0.2.7"
    source = refused.find("AuditSourceIdentification")
    assert source is not None
    assert source.get("AuditSourceID") == "APPLIANCE"


@ON_SQLITE_ONLY
def test_a_collector_not_trusted_gets_nothing_and_the_events_wait(
    engine: Engine, pki: Path, tmp_path: Path
) -> None:
    login_attempts(engine)
    with rsyslog(tmp_path, pki, "impostor") as (port, received):
        settings = AuditSettings(
            syslog_host="localhost", syslog_port=port, ca_certificates=pki / "hospital-ca.pem"
        )
        forwarder = AuditForwarder(settings, engine)
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            forwarder.forward()
    assert audit_messages(received) == []
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    with rsyslog(trusted, pki, "collector") as (port, received):
        settings = settings.model_copy(update={"syslog_port": port})
        assert AuditForwarder(settings, engine).forward() == 3  # all of them, still
        wait_for(lambda: len(audit_messages(received)) == 3, 20)
