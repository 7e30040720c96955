"""Certificates and TLS gateways for the tests that need them (tests/hardening/test_hardening_security.py,
tests/client/test_client.py): a test CA and certificates made with the `openssl` command line, API
keys, and a gateway started with TLS flags and waited on over HTTPS.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from helpers import wait_until
from tools import stack

KEYS = ("key-one-0123456789", "key-two-abcdefghij")


# -- certificates -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> Pem:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=folder)
    return Pem(folder / f"{name}.pem", folder / f"{name}.key")


def issue(folder: Path, ca: Pem, name: str, names: str) -> Pem:
    """A certificate signed by `ca` for the subjectAltName `names`, usable by servers and clients."""
    (folder / f"{name}.ext").write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth,clientAuth\n"
                                        "basicConstraints=CA:FALSE\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)
    return Pem(folder / f"{name}.pem", folder / f"{name}.key")


def start(backend: str, *flags: str, env: dict | None = None, ready_url_kwargs: dict | None = None):
    """A gateway with `flags`, waited on by polling /readyz with `ready_url_kwargs` (scheme, TLS, key)."""
    gw = stack.start_gateway(backend=backend, extra_args=list(flags), env={**os.environ, **(env or {})},
                             wait_ready=False)
    options = ready_url_kwargs or {}
    scheme = "https" if "verify" in options else "http"
    url = f"{scheme}://127.0.0.1:{gw.http_port}/readyz"

    def answered_200() -> bool:
        try:
            return httpx.get(url, timeout=5, **options).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answered_200, 60, f"{url} 200", interval=0.1)
    except BaseException:
        gw.process.stop()
        raise
    return gw
