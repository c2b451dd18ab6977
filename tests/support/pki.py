"""A small PKI made with openssl for TLS tests: certificate authorities and leaf certificates
for 127.0.0.1 and localhost."""

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )


def make_leaf(directory: Path, name: str, ca: str) -> None:
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    (directory / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.pem",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )


def hospital_pki(directory: Path, leaves: dict[str, str]) -> Path:
    """`directory` with two CAs, hospital-ca and rogue-ca, and each leaf of `leaves` (name:
    the CA that signs it)."""
    directory.mkdir()
    make_ca(directory, "hospital-ca")
    make_ca(directory, "rogue-ca")
    for name, ca in leaves.items():
        make_leaf(directory, name, ca)
    return directory
