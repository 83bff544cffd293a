"""Throwaway self-signed certificates (openssl), for the lab's HTTPS and the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_cert(
    directory: Path, names: list[str] | None = None, ips: list[str] | None = None
) -> tuple[Path, Path]:
    """A self-signed certificate (2 days) for localhost, 127.0.0.1, ::1 and more."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    san = ",".join(
        [f"DNS:{n}" for n in ["localhost", *(names or [])]]
        + [f"IP:{a}" for a in ["127.0.0.1", "::1", *(ips or [])]]
    )
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
