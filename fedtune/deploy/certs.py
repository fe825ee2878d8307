"""Certificates and keys for a real deployment: a CA, the SuperLink's TLS certificate, node keys.

TLS: SuperNodes and the ``flwr`` CLI verify the SuperLink against ``ca.crt``, so the SuperLink's
certificate must name every address clients dial (``--san``: DNS names and IP addresses).
Node authentication: each SuperNode signs its requests with its own EC (P-384) private key in
OpenSSH format, which is what ``flower-supernode --auth-supernode-private-key`` and
``flwr supernode register`` read; only registered public keys are let in.

Private keys are written with mode 0600. The CA key stays on the machine that made it; a client
host needs only ``ca.crt`` and its own ``node-K.key``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(
        now + dt.timedelta(days=VALID_DAYS))


def make_ca(folder: Path, name: str = "fedtune CA") -> tuple[Path, Path]:
    """A self-signed CA: ``ca.crt`` (share with every host) and ``ca.key`` (keep private)."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (_write(folder / "ca.crt", cert.public_bytes(serialization.Encoding.PEM)),
            _write(folder / "ca.key", _pem_key(key), private=True))


def make_server_cert(folder: Path, sans: list[str]) -> tuple[Path, Path]:
    """``server.pem`` + ``server.key`` for the SuperLink, signed by the CA in ``folder``."""
    if not sans:
        raise ValueError("give at least one --san: the address (IP or DNS name) clients dial")
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return (_write(folder / "server.pem", cert.public_bytes(serialization.Encoding.PEM)),
            _write(folder / "server.key", _pem_key(key), private=True))


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """``<name>.key`` (OpenSSH private key, for that host only) and ``<name>.pub`` (register it)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return (_write(folder / f"{name}.key", private, private=True),
            _write(folder / f"{name}.pub", public + f" {name}\n".encode()))


def make_all(folder: Path, sans: list[str], num_nodes: int) -> dict[str, list[Path] | Path]:
    """CA, SuperLink certificate and ``node-1`` ... ``node-N`` key pairs in ``folder``."""
    ca_crt, _ = make_ca(folder)
    server_pem, server_key = make_server_cert(folder, sans)
    nodes = [make_node_key(folder / "nodes", f"node-{k}") for k in range(1, num_nodes + 1)]
    return {"ca": ca_crt, "server_cert": server_pem, "server_key": server_key,
            "node_keys": [k for k, _ in nodes], "node_pubs": [p for _, p in nodes]}
