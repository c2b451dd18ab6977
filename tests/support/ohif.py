"""OHIF 3, the web viewer most imaging AI teams show results in, served offline: the prebuilt
viewer from npm's @ohif/app (scripts/test unpacks it under .cache/ohif/), with our own
app-config.js pointing at a real Orthanc's DICOMweb, proxied so that everything is one
origin, and the headers that make the page cross-origin isolated, as the viewer wants."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tests.support.services import free_port, missing_service

DIST = Path(__file__).resolve().parents[2] / ".cache" / "ohif" / "3.13.2" / "package" / "dist"
_TYPES = {
    ".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".wasm": "application/wasm",
    ".json": "application/json", ".svg": "image/svg+xml", ".png": "image/png",
    ".ico": "image/x-icon", ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf",
}  # fmt: skip
_ISOLATED = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
APP_CONFIG = b"""window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc', name: 'orthanc',
      wadoUriRoot: '/wado', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, supportsReject: false,
      imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
  defaultDataSourceName: 'orthanc',
};
"""


def _handler(orthanc: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in _ISOLATED.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path.startswith(("/dicom-web/", "/wado")):
                accept = self.headers.get("Accept", "*/*")
                answer = requests.get(orthanc + self.path, headers={"Accept": accept}, timeout=60)
                kind = answer.headers.get("Content-Type", "application/octet-stream")
                self._send(answer.status_code, answer.content, kind)
            elif path == "/app-config.js":
                self._send(200, APP_CONFIG, "text/javascript")
            elif path in ("/sw.js", "/init-service-worker.js"):
                self._send(200, b"", "text/javascript")
            else:
                file = (DIST / path.lstrip("/")).resolve()
                if not file.is_file() or DIST not in file.parents:
                    file = DIST / "index.html"  # a single-page app: its router takes the path
                self._send(
                    200, file.read_bytes(), _TYPES.get(file.suffix, "application/octet-stream")
                )

    return Handler


@contextmanager
def running_ohif(orthanc_url: str) -> Iterator[str]:
    """OHIF on a loopback port reading `orthanc_url` (Orthanc's REST root, with the DICOMweb
    plugin at /dicom-web); its base URL."""
    if not (DIST / "index.html").exists():
        missing_service(f"OHIF's prebuilt viewer (scripts/test unpacks it into {DIST.parent})")
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(orthanc_url.rstrip("/")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
