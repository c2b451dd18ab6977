"""A Storage SCP that misbehaves on demand, as PACSs do, for delivery tests."""

import time

from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SegmentationStorage,
)

from tests.support.services import free_port


class MisbehavingPacs:
    """A pynetdicom Storage SCP that misbehaves on demand, as PACSs do: refuses SR with 0xA900
    (Orthanc 1.10 answers Success even when its Lua filter drops an instance, so it cannot
    show this), aborts the association on its next C-STOREs, or answers slowly."""

    def __init__(self, refuse_sr: bool = False, abort_next: int = 0, delay: float = 0.0) -> None:
        self.received: list[str] = []  # every C-STORE that arrived
        self.stored: list[str] = []  # those answered with Success
        self.refuse_sr = refuse_sr
        self.abort_next = abort_next
        self.delay = delay
        ae = AE(ae_title="MISFIT")
        ae.add_supported_context(SegmentationStorage)
        ae.add_supported_context(Comprehensive3DSRStorage)
        ae.add_supported_context(  # the outlined cine, JPEG baseline
            MultiFrameTrueColorSecondaryCaptureImageStorage, [JPEGBaseline8Bit]
        )
        self.port = free_port()
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        self.received.append(uid)
        if self.abort_next:
            self.abort_next -= 1
            event.assoc.abort()
            return 0xA700
        time.sleep(self.delay)
        if self.refuse_sr and event.request.AffectedSOPClassUID == Comprehensive3DSRStorage:
            return 0xA900
        self.stored.append(uid)
        return 0

    def stop(self) -> None:
        self._server.shutdown()
