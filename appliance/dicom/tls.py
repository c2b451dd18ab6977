"""DICOM TLS (PS3.15 Annex B, BCP 195): the listener's server-side TLS context."""

import ssl
from pathlib import Path


def server_context(
    certificate: Path,
    private_key: Path,
    ca_certificates: Path | None,
    require_client_certificate: bool,
) -> ssl.SSLContext:
    """TLS 1.2 or newer; with `require_client_certificate`, clients must present a trusted one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=certificate, keyfile=private_key)
    if ca_certificates is not None:
        context.load_verify_locations(cafile=ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca_certificates: Path | None, certificate: Path | None, private_key: Path | None
) -> ssl.SSLContext:
    """TLS 1.2 or newer to a destination: its certificate checked against `ca_certificates`
    (the system's CAs if None), with our certificate when the destination asks for one."""
    context = ssl.create_default_context(cafile=str(ca_certificates) if ca_certificates else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        context.load_cert_chain(certfile=certificate, keyfile=private_key)
    return context
