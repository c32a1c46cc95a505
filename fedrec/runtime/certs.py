"""Throwaway TLS certificates and SuperNode keys for trying deployment on one machine.

:func:`make_test_certificates` writes a self-signed CA and a server certificate for
127.0.0.1 (SAN ``IP:127.0.0.1`` and ``DNS:localhost``), what ``flower-superlink
--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` and ``flower-supernode
--root-certificates`` (and fedrec's ``runtime.root-certificates``) take.
:func:`make_supernode_keys` writes an ECDSA (NIST P-384) key pair in OpenSSH format, the
format of ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode
register <public key>``. For tests, benchmarks and the README example only: the keys are
unencrypted and the CA is valid for a few days.

``python -m fedrec.runtime.certs FOLDER [NODE ...]`` writes both and prints the paths.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import sys
from pathlib import Path
from typing import NamedTuple


class Certificates(NamedTuple):
    ca: Path  #: the CA certificate (``--ssl-ca-certfile``, ``--root-certificates``)
    cert: Path  #: the server certificate (``--ssl-certfile``)
    key: Path  #: the server's private key (``--ssl-keyfile``)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def make_test_certificates(
    folder: str | Path, host: str = "127.0.0.1", days: int = 7
) -> Certificates:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (ECDSA P-256) to ``folder``: a
    throwaway CA and a server certificate it signs, valid for ``host`` (an IP address or a
    DNS name) and ``localhost``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedrec test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.insert(0, x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        if host != "localhost":
            names.insert(0, x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Certificates(
        ca=_write(out / "ca.pem", ca.public_bytes(pem)),
        cert=_write(out / "server.pem", cert.public_bytes(pem)),
        key=_write(
            out / "server.key",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            private=True,
        ),
    )


def make_supernode_keys(folder: str | Path, name: str = "supernode") -> tuple[Path, Path]:
    """Write ``<name>`` (private) and ``<name>.pub`` (public): an ECDSA P-384 key pair in
    OpenSSH format, for SuperNode authentication. Returns ``(private, public)``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = _write(
        out / name,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    public = _write(
        out / f"{name}.pub",
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b"\n",
    )
    return private, public


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m fedrec.runtime.certs FOLDER [NODE-KEY-NAME ...]")
        return
    certs = make_test_certificates(args[0])
    print(f"ca: {certs.ca}\ncert: {certs.cert}\nkey: {certs.key}")
    for name in args[1:]:
        private, public = make_supernode_keys(args[0], name)
        print(f"{name}: {private} (public: {public})")


if __name__ == "__main__":
    main()
