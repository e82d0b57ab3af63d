"""HTTPS: certificates are checked unless the host is declared insecure (a registry with a
self-signed certificate on 127.0.0.1, reached through the transport with an https URL)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from registry_helpers import start_registry

from overunder.errors import RegistryError
from overunder.registry.transport import HTTPTransport

pytestmark = pytest.mark.registry


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overunder test registry")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_checked_unless_insecure(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    reg = start_registry(
        tmp_path, "tls", f"  tls:\n    certificate: {cert}\n    key: {key}\n", ready_scheme="https"
    )
    try:
        url = f"https://{reg.host}/v2/"
        strict = HTTPTransport(timeout=10)
        with pytest.raises(RegistryError, match=r"certificate .* not trusted") as info:
            strict.request("GET", url)
        assert "--insecure-registry" in (info.value.hint or "")
        strict.close()
        insecure = HTTPTransport(timeout=10, insecure_hosts=[reg.host])
        with insecure.request("GET", url) as resp:
            assert resp.status == 200
        insecure.close()
        # Trusting the certificate as a CA verifies (IP SAN) without any opt-out.
        ctx = ssl.create_default_context(cafile=str(cert))
        trusted = HTTPTransport(timeout=10, ssl_context=ctx)
        with trusted.request("GET", url) as resp:
            assert resp.status == 200
        trusted.close()
    finally:
        reg.stop()
