"""Process-wide logging set-up: text or JSON lines on stderr.

Log records carry event identifiers (association, study and job row IDs, counts, durations) and
never patient attributes; the instance record masks them even if one is formatted by mistake.
Every record then passes one guard on its way out, library warnings included (they are
captured as records of `py.warnings`): what a library says may quote data values, so its
quoted values, person names and dates are masked; credentials in URLs are masked everywhere;
and control characters (a peer's AE title can hold them) are escaped. Libraries' routine
chatter (highdicom's INFO lines per job) is kept at WARNING unless DEBUG is asked for.
"""

import json
import logging
import re
import sys
from datetime import UTC, datetime

from appliance.config import MASK, LogFormat, LoggingSettings, mask_credentials

# In libraries' messages: a quoted value, a DICOM person name (its parts joined by ^), a date.
_LIBRARY_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|\S*\^\S*|\b(?:1[89]|2[01])\d{6}\b")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # all but the tab: no forged lines
_QUIET_LIBRARIES = ("highdicom", "pydicom", "pynetdicom", "alembic")


class Guard(logging.Filter):
    """The last word on every record: see the module's docstring."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not record.name.startswith("appliance"):
            message = _LIBRARY_VALUES.sub(MASK, message)
        message = mask_credentials(message)
        message = _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", message)
        record.msg, record.args = message, None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: LoggingSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.format is LogFormat.JSON:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
        )
    handler.addFilter(Guard())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    logging.captureWarnings(True)  # warnings become records, and pass the guard
    for library in _QUIET_LIBRARIES:
        level = logging.DEBUG if settings.level.upper() == "DEBUG" else logging.WARNING
        logging.getLogger(library).setLevel(level)
