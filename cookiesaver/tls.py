"""TLS: certificates parsed once, swapped whole on reload, chosen by SNI.

L{CertificateStore} is the server's L{IOpenSSLServerConnectionCreator}. It
holds ready-made OpenSSL contexts: the default pair from
C{COOKIESAVER_SSL_CRT_PATH}/C{COOKIESAVER_SSL_KEY_PATH} and, optionally, one
per host name from C{COOKIESAVER_SSL_CERTS_DIR}. A reload parses and checks
every file first and swaps the contexts only when all of them are good, so a
broken renewal keeps the old certificate served. Nothing reads a file during
a handshake: the SNI callback only looks a host name up in a dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

if TYPE_CHECKING:
    # The type of SSL.NO_OVERLAPPING_PROTOCOLS, which pyOpenSSL only names privately.
    from OpenSSL.SSL import _NoOverlappingProtocols

# Mozilla's "intermediate" TLS 1.2 cipher list; TLS 1.3 suites are OpenSSL's defaults.
CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


class CertificateError(Exception):
    """A certificate or key that cannot be served, as one line naming the file."""


@attrs.frozen
class CertificatePair:
    """One parsed, checked certificate chain and key, ready to become a context."""

    name: str
    chain: tuple[x509.Certificate, ...]
    key: object
    cert_path: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError:
        raise CertificateError(
            f"{what} {path}: permission denied (after dropping privileges the service user must be able to read it; "
            "letsencrypt's live/ keys are root-only: have the deploy hook install a copy the service user can read)"
        ) from None
    except FileNotFoundError:
        raise CertificateError(f"{what} {path}: not found") from None
    except OSError as e:
        raise CertificateError(f"{what} {path}: {e.strerror}") from None


def load_pair(cert_path: str, key_path: str, name: str = "default") -> CertificatePair:
    """Read and check one pair: both parse, the key matches the leaf certificate."""
    cert_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_pem))
    except ValueError:
        raise CertificateError(f"certificate {cert_path}: not a PEM certificate chain") from None
    if not chain:
        raise CertificateError(f"certificate {cert_path}: no certificate found")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise CertificateError(f"private key {key_path}: not an unencrypted PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != chain[0].public_key().public_bytes(der, spki):  # type: ignore[attr-defined]
        raise CertificateError(f"private key {key_path}: does not match the certificate in {cert_path}")
    return CertificatePair(name=name, chain=chain, key=key, cert_path=cert_path)


def load_sni_dir(directory: str) -> dict[str, CertificatePair]:
    """One sub-directory per host name, each with fullchain.pem and privkey.pem (certbot's live/ layout)."""
    pairs: dict[str, CertificatePair] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise CertificateError(f"certificates directory {directory}: {e.strerror}") from None
    for name in names:
        sub = os.path.join(directory, name)
        if not os.path.isdir(sub):
            continue
        pairs[name.lower()] = load_pair(os.path.join(sub, "fullchain.pem"), os.path.join(sub, "privkey.pem"), name.lower())
    return pairs


def _alpn_select(connection: SSL.Connection, offered: list[bytes]) -> bytes | _NoOverlappingProtocols:
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def make_context(pair: CertificatePair) -> SSL.Context:
    """A server context: TLS 1.2 and 1.3 only, modern ciphers, the full chain, ALPN http/1.1."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    ctx.set_cipher_list(CIPHERS)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    ctx.set_session_id(b"cookiesaver")
    ctx.use_certificate(pair.leaf)
    for extra in pair.chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(pair.key)  # type: ignore[arg-type]
    ctx.check_privatekey()
    ctx.set_alpn_select_callback(_alpn_select)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class CertificateStore:
    """The current contexts; handshakes read them, reloads replace them."""

    def __init__(self, cert_path: str, key_path: str, sni_dir: str | None = None) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.sni_dir = sni_dir
        self._default: SSL.Context | None = None
        self._by_name: Mapping[str, SSL.Context] = {}
        self.default_pair: CertificatePair | None = None

    def load(self) -> None:
        """Parse everything, then swap. On any error the old contexts stay and L{CertificateError} says why."""
        pair = load_pair(self.cert_path, self.key_path)
        named = load_sni_dir(self.sni_dir) if self.sni_dir else {}
        try:
            default = make_context(pair)
            by_name = {name: make_context(p) for name, p in named.items()}
        except SSL.Error as e:
            raise CertificateError(f"certificate {self.cert_path}: OpenSSL refused it: {e}") from None
        for ctx in (default, *by_name.values()):
            ctx.set_tlsext_servername_callback(self._choose_by_server_name)
        self._default, self._by_name, self.default_pair = default, by_name, pair

    def _choose_by_server_name(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if name:
            ctx = self._by_name.get(name.decode("ascii", "replace").lower().rstrip("."))
            if ctx is not None:
                connection.set_context(ctx)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        assert self._default is not None, "CertificateStore.load() must succeed before serving"
        return SSL.Connection(self._default, None)
