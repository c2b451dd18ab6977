"""What both ends of an association share (PS3.7 Annex D, PS3.8 section 9.3.2): the DICOM
application context, the longest PDU the appliance takes, and the implementation's identity,
which it also writes into every File Meta Information header it makes (PS3.10 section 7.1).
"""

from typing import Any

from pydicom.uid import UID
from pynetdicom.pdu_primitives import (
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)

from appliance import __version__

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
MAX_PDU_LENGTH = 1 << 20  # what we accept; a longer PDU is a protocol error
# A UUID-derived UID (PS3.5 Annex B.2): unique without a registered root.
IMPLEMENTATION_CLASS_UID = "2.25.147690566407424862805522298222690410017"
IMPLEMENTATION_VERSION_NAME = f"APPLIANCE_{__version__}"[:16]


def our_user_information() -> list[Any]:  # pynetdicom's user-information item types
    """What the appliance says of itself in every A-ASSOCIATE, as acceptor or requestor: the
    longest PDU it takes, its implementation class UID and version name."""
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = MAX_PDU_LENGTH
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return [maximum, implementation, version]
