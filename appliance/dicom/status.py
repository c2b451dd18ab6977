"""Named DIMSE status codes and A-ASSOCIATE-RJ parameters used by the listener.

C-STORE statuses from PS3.4 Annex B.2.3 (Table B.2-1) and PS3.7 Annex C; association rejection
result, source and reason from PS3.8 section 9.3.4 (Table 9-21).
"""

from enum import IntEnum


class StoreStatus(IntEnum):
    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    PROCESSING_FAILURE = 0x0110


class RejectResult(IntEnum):
    PERMANENT = 0x01
    TRANSIENT = 0x02


class RejectSource(IntEnum):
    SERVICE_USER = 0x01
    SERVICE_PROVIDER_ACSE = 0x02
    SERVICE_PROVIDER_PRESENTATION = 0x03


class ProviderRejectReason(IntEnum):
    """Reasons when the source is the presentation-related service provider."""

    TEMPORARY_CONGESTION = 0x01
    LOCAL_LIMIT_EXCEEDED = 0x02


class UserRejectReason(IntEnum):
    NO_REASON_GIVEN = 0x01
    APPLICATION_CONTEXT_NOT_SUPPORTED = 0x02
    CALLING_AE_TITLE_NOT_RECOGNISED = 0x03
    CALLED_AE_TITLE_NOT_RECOGNISED = 0x07
