"""A throw-away certificate authority for tests, made with the ``openssl`` binary (EC P-256 keys:
fast): a CA, a server certificate for ``localhost`` / ``127.0.0.1`` and client certificates."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertAuthority", "make_ca"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class CertAuthority:
    dir: Path
    ca: Path  # the CA certificate (PEM)
    ca_key: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str, subject: str) -> tuple[Path, Path]:
        """(certificate, key) of a client certificate with this subject (``/O=Example/CN=alice``)."""
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", subject, cwd=self.dir)  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                 "-CAcreateserial", "-days", "2", "-out", str(cert), cwd=self.dir)  # fmt: skip
        return cert, key


def make_ca(directory: Path) -> CertAuthority:
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=streamtoll test CA",
             cwd=directory)  # fmt: skip
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=directory)  # fmt: skip
    return CertAuthority(directory, ca, ca_key, cert, key)
