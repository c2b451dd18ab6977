"""Audit event vocabulary, shaped after DICOM PS3.15 Annex A.5 audit messages.

Event IDs use the DCM coding scheme where PS3.15 defines one; appliance-specific events (study
assembly, jobs) use the private scheme `99APPLIANCE` so they never pose as standard codes.
"""

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class EventAction(StrEnum):
    """EventActionCode (PS3.15 A.5.1)."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class EventOutcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True, slots=True)
class CodedEvent:
    code: str
    scheme: str
    meaning: str


class AuditEventType(StrEnum):
    """What happened, in the appliance's words; `EVENT_IDS` gives the coded EventID."""

    ASSOCIATION_STARTED = "association_started"
    ASSOCIATION_ENDED = "association_ended"
    ASSOCIATION_REFUSED = "association_refused"
    CONTEXT_REFUSED = "context_refused"
    INSTANCE_STORED = "instance_stored"
    INSTANCE_REJECTED = "instance_rejected"
    INSTANCE_DUPLICATE = "instance_duplicate"
    INSTANCE_REPLACED = "instance_replaced"
    STUDY_COMPLETED = "study_completed"
    STUDY_REOPENED = "study_reopened"
    JOB_CREATED = "job_created"
    JOB_STATE = "job_state"
    RESULT_QUEUED = "result_queued"
    RESULT_DELIVERED = "result_delivered"
    DELIVERY_RETRY = "delivery_retry"
    DELIVERY_DEAD_LETTER = "delivery_dead_letter"
    USER_LOGIN = "user_login"
    USER_LOGOUT = "user_logout"
    ACCOUNT_CHANGED = "account_changed"
    PATIENT_DATA_SHOWN = "patient_data_shown"
    AUDIT_EXPORTED = "audit_exported"


_BEGIN_TRANSFER = CodedEvent("110102", "DCM", "Begin Transferring DICOM Instances")
_TRANSFERRED = CodedEvent("110104", "DCM", "DICOM Instances Transferred")
_SECURITY_ALERT = CodedEvent("110113", "DCM", "Security Alert")
_AUTHENTICATION = CodedEvent("110114", "DCM", "User Authentication")
_APPLIANCE = "99APPLIANCE"

EVENT_IDS: dict[AuditEventType, CodedEvent] = {
    AuditEventType.ASSOCIATION_STARTED: _BEGIN_TRANSFER,
    AuditEventType.ASSOCIATION_ENDED: _TRANSFERRED,
    AuditEventType.ASSOCIATION_REFUSED: _SECURITY_ALERT,
    AuditEventType.CONTEXT_REFUSED: _TRANSFERRED,
    AuditEventType.INSTANCE_STORED: _TRANSFERRED,
    AuditEventType.INSTANCE_REJECTED: _TRANSFERRED,
    AuditEventType.INSTANCE_DUPLICATE: _TRANSFERRED,
    AuditEventType.INSTANCE_REPLACED: _TRANSFERRED,
    AuditEventType.STUDY_COMPLETED: CodedEvent("STUDY-COMPLETE", _APPLIANCE, "Study complete"),
    AuditEventType.STUDY_REOPENED: CodedEvent("STUDY-REOPEN", _APPLIANCE, "Study re-opened"),
    AuditEventType.JOB_CREATED: CodedEvent("JOB-CREATE", _APPLIANCE, "Job created"),
    AuditEventType.JOB_STATE: CodedEvent("JOB-STATE", _APPLIANCE, "Job state changed"),
    AuditEventType.RESULT_QUEUED: CodedEvent("RESULT-QUEUE", _APPLIANCE, "Result queued"),
    AuditEventType.RESULT_DELIVERED: _TRANSFERRED,
    AuditEventType.DELIVERY_RETRY: _TRANSFERRED,
    AuditEventType.DELIVERY_DEAD_LETTER: _TRANSFERRED,
    AuditEventType.USER_LOGIN: _AUTHENTICATION,
    AuditEventType.USER_LOGOUT: _AUTHENTICATION,
    AuditEventType.ACCOUNT_CHANGED: CodedEvent("110136", "DCM", "Security Roles Changed"),
    AuditEventType.PATIENT_DATA_SHOWN: CodedEvent("110110", "DCM", "Patient Record"),
    AuditEventType.AUDIT_EXPORTED: CodedEvent("110106", "DCM", "Export"),
}
