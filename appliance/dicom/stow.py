"""DICOMweb STOW-RS (PS3.18 section 10.5), the second kind of destination, with
dicomweb-client over one HTTP session per delivery round.

An answer is mapped onto the C-STORE status vocabulary so one set of delivery rules serves
both kinds: stored (200), stored with warnings (202), refused with the Failure Reason the
server gives (409 and other 4xx), and unavailable (connection errors, timeouts, 5xx, 429).
"""

from io import BytesIO
from pathlib import Path
from types import TracebackType

import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from appliance.dicom.sender import Outgoing
from appliance.domain.delivery import DestinationUnavailable
from appliance.domain.status import DimseStatus, Status


class StowSession:
    def __init__(
        self,
        url: str,
        timeout: float,
        auth: tuple[str, str] | None = None,
        ca_certificates: Path | None = None,
        client_certificate: tuple[Path, Path] | None = None,
    ) -> None:
        self._session = requests.Session()
        self._session.auth = auth
        if ca_certificates is not None:
            self._session.verify = str(ca_certificates)
        if client_certificate is not None:
            self._session.cert = (str(client_certificate[0]), str(client_certificate[1]))
        self._url = url
        self._timeout = timeout
        self._client = DICOMwebClient(url=url, session=self._session)
        self._client.set_http_retry_params(retry=False)

    def __enter__(self) -> "StowSession":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._session.close()

    def store(self, item: Outgoing) -> DimseStatus:
        """STOW one object; its status in C-STORE terms. Raises DestinationUnavailable."""
        dataset = dcmread(BytesIO(item.part10))
        try:
            answer = self._client.store_instances([dataset])
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code >= 500 or code == 429:
                raise DestinationUnavailable(f"{self._url} answered HTTP {code}") from exc
            return DimseStatus(_failure_reason(exc.response) or Status.PROCESSING_FAILURE)
        except requests.RequestException as exc:
            raise DestinationUnavailable(f"{self._url}: {exc}") from exc
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            return DimseStatus(int(failed[0].get("FailureReason", Status.PROCESSING_FAILURE)))
        warnings = answer.get("WarningReason") if answer is not None else None
        return DimseStatus(int(warnings) if warnings else Status.SUCCESS)


def _failure_reason(response: requests.Response | None) -> int | None:
    """The Failure Reason in a 4xx answer's Store Instances Response, when it carries one."""
    if response is None or not response.content:
        return None
    try:
        answer = dcmread(BytesIO(response.content), force=True)
        failed = answer.get("FailedSOPSequence")
        return int(failed[0].FailureReason) if failed else None
    except (InvalidDicomError, ValueError, TypeError, AttributeError, IndexError, KeyError):
        # an answer that is not DICOM says nothing more than its HTTP code
        return None
