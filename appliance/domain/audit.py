"""Audit event vocabulary, shaped after DICOM PS3.15 Annex A.5 audit messages.

Event IDs use the DCM coding scheme where PS3.15 defines one; appliance-specific events (study
assembly, jobs) use the private scheme `99APPLIANCE` so they never pose as standard codes.
"""

from enum import IntEnum, StrEnum

from appliance.domain.concepts import CodedConcept


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
    GOVERNANCE_CHANGED = "governance_changed"
    RESULT_KEPT = "result_kept"
    MODEL_IMPORTED = "model_imported"


_BEGIN_TRANSFER = CodedConcept("DCM", "110102", "Begin Transferring DICOM Instances")
_TRANSFERRED = CodedConcept("DCM", "110104", "DICOM Instances Transferred")
_SECURITY_ALERT = CodedConcept("DCM", "110113", "Security Alert")
_AUTHENTICATION = CodedConcept("DCM", "110114", "User Authentication")
_APPLIANCE = "99APPLIANCE"

EVENT_IDS: dict[AuditEventType, CodedConcept] = {
    AuditEventType.ASSOCIATION_STARTED: _BEGIN_TRANSFER,
    AuditEventType.ASSOCIATION_ENDED: _TRANSFERRED,
    AuditEventType.ASSOCIATION_REFUSED: _SECURITY_ALERT,
    AuditEventType.CONTEXT_REFUSED: _TRANSFERRED,
    AuditEventType.INSTANCE_STORED: _TRANSFERRED,
    AuditEventType.INSTANCE_REJECTED: _TRANSFERRED,
    AuditEventType.INSTANCE_DUPLICATE: _TRANSFERRED,
    AuditEventType.INSTANCE_REPLACED: _TRANSFERRED,
    AuditEventType.STUDY_COMPLETED: CodedConcept(_APPLIANCE, "STUDY-COMPLETE", "Study complete"),
    AuditEventType.STUDY_REOPENED: CodedConcept(_APPLIANCE, "STUDY-REOPEN", "Study re-opened"),
    AuditEventType.JOB_CREATED: CodedConcept(_APPLIANCE, "JOB-CREATE", "Job created"),
    AuditEventType.JOB_STATE: CodedConcept(_APPLIANCE, "JOB-STATE", "Job state changed"),
    AuditEventType.RESULT_QUEUED: CodedConcept(_APPLIANCE, "RESULT-QUEUE", "Result queued"),
    AuditEventType.RESULT_DELIVERED: _TRANSFERRED,
    AuditEventType.DELIVERY_RETRY: _TRANSFERRED,
    AuditEventType.DELIVERY_DEAD_LETTER: _TRANSFERRED,
    AuditEventType.USER_LOGIN: _AUTHENTICATION,
    AuditEventType.USER_LOGOUT: _AUTHENTICATION,
    AuditEventType.ACCOUNT_CHANGED: CodedConcept("DCM", "110136", "Security Roles Changed"),
    AuditEventType.PATIENT_DATA_SHOWN: CodedConcept("DCM", "110110", "Patient Record"),
    AuditEventType.AUDIT_EXPORTED: CodedConcept("DCM", "110106", "Export"),
    AuditEventType.GOVERNANCE_CHANGED: CodedConcept(_APPLIANCE, "GOVERNANCE", "Pipeline state"),
    AuditEventType.RESULT_KEPT: CodedConcept(_APPLIANCE, "RESULT-SHADOW", "Result kept, shadow"),
    AuditEventType.MODEL_IMPORTED: CodedConcept(_APPLIANCE, "MODEL-IMPORT", "Model imported"),
}
