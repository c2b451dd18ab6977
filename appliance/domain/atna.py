"""Audit events as IHE ATNA sends them to a hospital's audit repository: a DICOM audit message
(PS3.15 A.5) as the body of an RFC 5424 syslog message, framed by octet counting for TLS
(RFC 5425). The message names the event (its coded EventID), who acted from where, the
appliance as its source, and the study it concerned; never patient identifiers.
"""

from dataclasses import dataclass
from datetime import datetime
from xml.etree import ElementTree

from appliance.domain.concepts import CodedConcept

# Facility 13 (log audit), severity 6 (informational); the MSGID IHE ITI TF-2 gives.
_PRIORITY = 13 * 8 + 6
MSGID = "IHE+RFC-3881"
_STUDY_UID = CodedConcept("DCM", "110180", "Study Instance UID")


@dataclass(frozen=True)
class AuditRecord:
    """One audit event, as the audit table holds it."""

    id: int
    occurred_at: datetime
    event_id: CodedConcept
    action: str
    outcome: int
    actor: str
    actor_host: str | None
    study_instance_uid: str | None
    detail: str | None


def audit_message(record: AuditRecord, source_id: str) -> bytes:
    """The DICOM audit message (PS3.15 A.5.1) of one event, as UTF-8 XML."""
    message = ElementTree.Element("AuditMessage")
    identification = ElementTree.SubElement(
        message,
        "EventIdentification",
        EventActionCode=record.action,
        EventDateTime=record.occurred_at.isoformat(),
        EventOutcomeIndicator=str(record.outcome),
    )
    _coded(identification, "EventID", record.event_id)
    participant = {"UserID": record.actor, "UserIsRequestor": "true"}
    if record.actor_host:
        participant |= {"NetworkAccessPointID": record.actor_host,
                        "NetworkAccessPointTypeCode": "2"}  # fmt: skip
    ElementTree.SubElement(message, "ActiveParticipant", participant)
    ElementTree.SubElement(message, "AuditSourceIdentification", AuditSourceID=source_id)
    if record.study_instance_uid:
        study = ElementTree.SubElement(
            message,
            "ParticipantObjectIdentification",
            ParticipantObjectID=record.study_instance_uid,
            ParticipantObjectTypeCode="2",  # system object
            ParticipantObjectTypeCodeRole="3",  # report
        )
        _coded(study, "ParticipantObjectIDTypeCode", _STUDY_UID)
        if record.detail:
            ElementTree.SubElement(study, "ParticipantObjectDescription").text = record.detail
    return bytes(ElementTree.tostring(message, encoding="utf-8", xml_declaration=False))


def syslog_frame(body: bytes, at: datetime, hostname: str, process_id: int) -> bytes:
    """An RFC 5424 message carrying `body`, octet-counted for a TLS transport (RFC 5425)."""
    header = f"<{_PRIORITY}>1 {at.isoformat()} {hostname} appliance {process_id} {MSGID} - "
    message = header.encode("ascii") + body
    return f"{len(message)} ".encode("ascii") + message


def _coded(parent: ElementTree.Element, tag: str, concept: CodedConcept) -> None:
    ElementTree.SubElement(
        parent,
        tag,
        {"csd-code": concept.value, "codeSystemName": concept.scheme,
         "originalText": concept.meaning},
    )  # fmt: skip
