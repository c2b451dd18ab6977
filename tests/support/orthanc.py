"""A real Orthanc PACS for tests: the Debian `orthanc` binary on loopback ports of its own,
with its own configuration, storage and (optionally) the DICOMweb plugin, read back through
its REST API."""

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.support.services import free_port, missing_service
from tests.support.waiting import wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


# Send each stable study's image series to the appliance, once: a study that already holds a
# SEG (the appliance's answer) is not sent again. Through the REST API's store route: Lua's
# SendToModality in Orthanc 1.10.1 failed here with "Unable to read attachment".
ROUTE_STABLE_STUDIES = """
function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  for _, s in ipairs(series) do
    if s['MainDicomTags']['Modality'] == 'SEG' then return end
  end
  local images = {}
  for _, s in ipairs(series) do
    if s['MainDicomTags']['Modality'] ~= 'SR' then
      table.insert(images, s['ID'])
    end
  end
  RestApiPost('/modalities/appliance/store', DumpJson(images, true))
end
"""


@dataclass
class Orthanc:
    dicom_port: int
    http_port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str) -> Any:
        answer = requests.get(f"{self.url}{path}", timeout=10)
        answer.raise_for_status()
        return answer.json() if "json" in answer.headers.get("content-type", "") else answer.content

    def sop_instance_uids(self) -> list[str]:
        return sorted(
            self.get(f"/instances/{identifier}/simplified-tags")["SOPInstanceUID"]
            for identifier in self.get("/instances")
        )

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


def require_orthanc(dicomweb: bool = False) -> None:
    if shutil.which("Orthanc") is None:
        missing_service("Orthanc (Debian package orthanc) is not installed")
    if dicomweb and not DICOMWEB_PLUGIN.exists():
        missing_service("the Orthanc DICOMweb plugin (Debian orthanc-dicomweb) is not installed")


@contextmanager
def running_orthanc(
    directory: Path,
    dicom_port: int | None = None,
    dicomweb: bool = False,
    route_to: tuple[str, int] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc and wait until its REST API answers; stop it on exit. With `route_to`
    (AE title, port) it auto-routes each stable study's image series there, as a hospital
    PACS routes to an AI node. Orthanc 1.10 binds every interface (it cannot choose an
    address); tests only ever use 127.0.0.1."""
    require_orthanc(dicomweb)
    server = Orthanc(dicom_port or free_port(), free_port(), directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "test-pacs",
        "StorageDirectory": str(directory / "storage"),
        "IndexDirectory": str(directory / "storage"),
        "DicomAet": AE_TITLE,
        "DicomPort": server.dicom_port,
        "HttpPort": server.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "UnknownSopClassAccepted": True,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 2,
    }
    if route_to is not None:
        config["DicomModalities"] = {"appliance": [route_to[0], "127.0.0.1", route_to[1]]}
        (directory / "route.lua").write_text(ROUTE_STABLE_STUDIES)
        config["LuaScripts"] = [str(directory / "route.lua")]
    (directory / "orthanc.json").write_text(json.dumps(config))
    log = open(directory / "orthanc.log", "wb")  # noqa: SIM115 - closed after the process
    process = subprocess.Popen(
        ["Orthanc", str(directory / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )

    def ready() -> bool:
        try:
            requests.get(f"{server.url}/system", timeout=1).raise_for_status()
        except requests.RequestException:
            if process.poll() is not None:
                raise AssertionError("Orthanc exited") from None
            return False
        return True

    try:
        try:
            wait_for(ready, 30)
        except AssertionError as exc:
            log_tail = (directory / "orthanc.log").read_text()[-2000:]
            raise RuntimeError(f"Orthanc did not start ({exc}): {log_tail}") from None
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
