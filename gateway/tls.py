"""TLS for the gateway's two ports and for its channel to the model server, from the settings.

All optional: with no certificate configured both ports speak plaintext (the default, for a
gateway behind a TLS-terminating load balancer or a mesh). With `tls_cert_file`/`tls_key_file`
the gRPC port and the HTTP port both serve TLS from the same certificate; adding
`tls_client_ca_file` makes both require a client certificate signed by that CA (mutual TLS).
`backend_tls` does the same for the gateway's calls to the model server (TF Serving's
`--ssl_config_file`), optionally presenting a client certificate.

PEM files are read once, at start-up; a file that is not PEM stops start-up with a message naming
the setting instead of surfacing later as failed handshakes.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import grpc

from gateway.settings import Settings

_PEM_MARKER = b"-----BEGIN "


class TlsConfigError(Exception):
    """A configured certificate or key file cannot be used; the message names the setting."""


def _pem(setting: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if _PEM_MARKER not in data:
        raise TlsConfigError(f"{setting}: {path} is not a PEM file (no '-----BEGIN' line)")
    return data


def grpc_server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Credentials for the gRPC port, or None for plaintext."""
    if not settings.tls:
        return None
    client_ca = _pem("tls_client_ca_file", settings.tls_client_ca_file)
    return grpc.ssl_server_credentials(
        [(_pem("tls_key_file", settings.tls_key_file), _pem("tls_cert_file", settings.tls_cert_file))],
        root_certificates=client_ca, require_client_auth=client_ca is not None)


def uvicorn_ssl_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that make the HTTP port serve the same TLS."""
    if not settings.tls:
        return {}
    for setting in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        _pem(setting, getattr(settings, setting))  # same checks and messages as for gRPC
    try:  # a key that does not match the certificate, or an unreadable CA bundle, stops start-up here
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if settings.tls_client_ca_file is not None:
            context.load_verify_locations(settings.tls_client_ca_file)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"tls_cert_file/tls_key_file/tls_client_ca_file cannot be used: {exc.reason or exc}") from None
    options: dict[str, Any] = {"ssl_certfile": str(settings.tls_cert_file),
                               "ssl_keyfile": str(settings.tls_key_file)}
    if settings.tls_client_ca_file is not None:
        options.update(ssl_ca_certs=str(settings.tls_client_ca_file), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def backend_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Credentials for the channel to the model server, or None for plaintext."""
    if not settings.backend_tls:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_pem("backend_ca_file", settings.backend_ca_file),
        private_key=_pem("backend_key_file", settings.backend_key_file),
        certificate_chain=_pem("backend_cert_file", settings.backend_cert_file))
