"""Development secrets for ``make run``: never used in production, never committed.

``python -m cookiesaver.devsecrets --out dev-secrets`` creates, when missing:
a self-signed certificate for pxl.localhost (and 127.0.0.1), the cookie
secret, a click-token key ("dev"), a VAPID key for the site "shop" (the id the docs' examples use), and
sites.json describing that site. Existing files are kept, so cookies and keys
survive restarts.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(hostnames: list[str], days: int = 365, key: ec.EllipticCurvePrivateKey | None = None, not_before: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate for the names (IP literals become IP SANs); PEM cert and key."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    sans: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def random_key_text() -> bytes:
    """32 random bytes, base64url without padding, one line: the format of cookie secrets and token keys."""
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=") + b"\n"


def _write_new(path: str, data: bytes) -> bool:
    if os.path.exists(path):
        return False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def create(out: str, hostname: str = "pxl.localhost") -> list[str]:
    """Create what is missing under C{out}; return the names created."""
    os.makedirs(out, mode=0o700, exist_ok=True)
    created = []
    if not os.path.exists(os.path.join(out, "fullchain.pem")):
        cert, key = self_signed([hostname, "localhost", "127.0.0.1"])
        _write_new(os.path.join(out, "privkey.pem"), key)
        _write_new(os.path.join(out, "fullchain.pem"), cert)
        created.extend(["fullchain.pem", "privkey.pem"])
    for name in ("cookie-secret", "token-dev.key"):
        if _write_new(os.path.join(out, name), random_key_text()):
            created.append(name)
    vapid = os.path.join(out, "vapid-shop.pem")
    vapid_key = ec.generate_private_key(ec.SECP256R1())
    if _write_new(vapid, vapid_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())):
        created.append("vapid-shop.pem")
    sites = {
        "shop": {
            "origins": ["https://shop.localhost", "https://shop.localhost:8443", "https://localhost:8443"],
            "vapid_private_key": vapid,
            "vapid_subject": "mailto:dev@pxl.localhost",
        }
    }
    if _write_new(os.path.join(out, "sites.json"), json.dumps(sites).encode()):
        created.append("sites.json")
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cookiesaver.devsecrets", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="dev-secrets")
    parser.add_argument("--hostname", default="pxl.localhost")
    args = parser.parse_args(argv)
    try:
        created = create(os.path.abspath(args.out), args.hostname)
    except OSError as e:
        print(f"devsecrets: {args.out}: {e.strerror}", file=sys.stderr)
        return 1
    if created:
        print(f"devsecrets: created {', '.join(created)} in {args.out}/ (development only, git-ignored)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
