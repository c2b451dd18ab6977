"""Every log record passes one guard: library warnings lose the values they quote (a patient
name reached the log through highdicom's), URLs lose their passwords, control characters a
peer sent are escaped, and libraries' routine INFO lines stay out unless DEBUG is asked for.
And the files that hold patient data are private to the appliance's user."""

import io
import logging
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from appliance.app.delivery import Deliverer
from appliance.app.logs import configure_logging
from appliance.config import DeliverySettings, LoggingSettings
from appliance.dicom.spool import Spool, write_durably
from appliance.store.db import create_db_engine


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(LoggingSettings(level="INFO"))
    root = logging.getLogger()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    logging.captureWarnings(False)
    root.handlers[:] = []


def test_a_library_warning_loses_the_patient_data_it_quotes(log: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(
            "Value 'DOE^JANE' of Patient's Name, born 19600101, with ID \"PID-77\"", stacklevel=1
        )
    logging.getLogger("highdicom.seg").warning("ignoring PatientName DOE^JANE")
    text = log.getvalue()
    for leaked in ("DOE", "JANE", "19600101", "PID-77"):
        assert leaked not in text
    assert text.count("<masked>") >= 4
    assert "Patient's Name" in text  # the rest of the message stays readable


def test_passwords_in_urls_are_masked_and_control_characters_escaped(log: io.StringIO) -> None:
    logger = logging.getLogger("appliance.test")
    logger.warning("database postgresql+psycopg://appliance:s3cret@db/appliance unreachable")
    logger.warning("refused association from %s@%s", "EVIL\r\n2026 INFO forged", "10.0.0.9")
    text = log.getvalue()
    assert "s3cret" not in text
    assert "postgresql+psycopg://appliance:<masked>@db/appliance" in text
    assert "EVIL\\x0d\\x0a2026 INFO forged" in text
    assert len(text.splitlines()) == 2


def test_library_chatter_stays_at_warning_unless_debug_is_asked_for(log: io.StringIO) -> None:
    logging.getLogger("highdicom.seg.sop").info("encoding frame 17 of 300")
    assert log.getvalue() == ""
    configure_logging(LoggingSettings(level="DEBUG"))
    assert logging.getLogger("highdicom").getEffectiveLevel() == logging.DEBUG


def test_files_holding_patient_data_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """The spool, the outbox and the SQLite database with its WAL: 0700 and 0600 under a
    permissive umask (before: 0750/0640 and the umask's defaults)."""
    previous = os.umask(0o022)
    try:
        spool = Spool(tmp_path / "spool", 90.0)
        write_durably(tmp_path / "spool" / "a" / "b.dcm", spool.root / ".incoming", spool.root,
                      (b"x",))  # fmt: skip
        engine = create_db_engine(f"sqlite:///{tmp_path}/db/appliance.db")
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            connection.execute(text("INSERT INTO t VALUES (1)"))
        Deliverer(DeliverySettings(outbox=tmp_path / "outbox"), engine)
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    for directory in ("spool", "spool/.incoming", "spool/a", "outbox", "outbox/.staging"):
        assert mode(tmp_path / directory) == 0o700, directory
    assert mode(tmp_path / "spool" / "a" / "b.dcm") == 0o600
    for name in ("appliance.db", "appliance.db-wal"):
        if (tmp_path / "db" / name).exists():
            assert mode(tmp_path / "db" / name) == 0o600, name
    assert mode(tmp_path / "db" / "appliance.db") == 0o600
