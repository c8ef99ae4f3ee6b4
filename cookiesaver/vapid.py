"""VAPID key pairs, one per site: loaded once at start, and a CLI to make them.

Browsers bind a push subscription to the application server key it was made
with; the platform signs its pushes with the matching private key. Each
subscription stores the L{SiteKey.key_id} it was made under, so a rotation is
visible in the data (old subscriptions carry the old id).

    python -m cookiesaver.vapid generate --out /etc/cookiesaver/vapid/shop.pem
    python -m cookiesaver.vapid show /etc/cookiesaver/vapid/shop.pem
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cookiesaver.config import ConfigError, SiteConfig
from cookiesaver.subscription import b64url_encode


class VapidError(ConfigError):
    """A VAPID key problem, as one line naming the site and the file."""


def key_id(public_point: bytes) -> str:
    """The first 16 base64url characters of SHA-256 of the uncompressed public point."""
    return b64url_encode(hashlib.sha256(public_point).digest())[:16]


def public_point(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 65-byte uncompressed point browsers take as C{applicationServerKey}."""
    return private_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@attrs.frozen
class SiteKey:
    """One site's VAPID key pair and what goes with it."""

    site_id: str
    path: str
    public_point: bytes = attrs.field(repr=False)
    public_b64url: str
    key_id: str
    subject: str | None
    private_key: ec.EllipticCurvePrivateKey = attrs.field(repr=False, eq=False)


def load_private_key(path: str) -> ec.EllipticCurvePrivateKey:
    """
    Read a PEM P-256 private key.

    @raise ValueError: one line saying what is wrong with the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError("not found") from None
    except IsADirectoryError:
        raise ValueError("is a directory") from None
    except PermissionError:
        raise ValueError("permission denied") from None
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("is encrypted; VAPID keys must be stored unencrypted with mode 0600") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not a P-256 (prime256v1) EC private key")  # noqa: TRY004 -- one error type for every bad file
    return key


class VapidKeys(Mapping[str, SiteKey]):
    """The sites' VAPID keys by site id. Sites without C{vapid_private_key} have none (push is off for them)."""

    def __init__(self, keys: Mapping[str, SiteKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_sites(cls, sites: Mapping[str, SiteConfig]) -> VapidKeys:
        """
        Load every configured site's key, once, at start.

        @raise VapidError: one line naming the site and the file.
        """
        keys = {}
        for site_id, site in sites.items():
            path = site.vapid_private_key
            if not path:
                continue
            where = f"COOKIESAVER_SITES.{site_id}.vapid_private_key {path}"
            try:
                private = load_private_key(path)
            except ValueError as e:
                raise VapidError(f"{where}: {e}") from None
            if not site.vapid_subject:
                raise VapidError(f"COOKIESAVER_SITES.{site_id}.vapid_subject: required with vapid_private_key (a mailto: or https: contact)")
            point = public_point(private)
            keys[site_id] = SiteKey(
                site_id=site_id,
                path=path,
                public_point=point,
                public_b64url=b64url_encode(point),
                key_id=key_id(point),
                subject=site.vapid_subject,
                private_key=private,
            )
        return cls(keys)

    def __getitem__(self, site_id: str) -> SiteKey:
        return self._keys[site_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


# --- command line ------------------------------------------------------------


def generate(out: str, force: bool = False) -> SiteKey:
    """Write a new P-256 private key as PKCS#8 PEM with mode 0600; refuse to overwrite unless C{force}."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(out, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
    finally:
        os.close(fd)
    point = public_point(private)
    return SiteKey("", out, point, b64url_encode(point), key_id(point), None, private)


def _describe(key: SiteKey) -> str:
    return f"public key (applicationServerKey): {key.public_b64url}\nkey id: {key.key_id}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """C{python -m cookiesaver.vapid}: errors are one line on stderr, never a traceback."""
    parser = argparse.ArgumentParser(prog="python -m cookiesaver.vapid", description="Make and inspect per-site VAPID keys.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write a new P-256 private key (PEM, mode 0600) and print its public key")
    gen.add_argument("--out", required=True, help="where to write the PEM file (the site's vapid_private_key)")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file (invalidates every subscription made with it)")
    show = commands.add_parser("show", help="print the public key and key id of an existing PEM file")
    show.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            key = generate(args.out, force=args.force)
        else:
            private = load_private_key(args.path)
            point = public_point(private)
            key = SiteKey("", args.path, point, b64url_encode(point), key_id(point), None, private)
    except FileExistsError:
        sys.stderr.write(f"error: {args.out}: already exists; use --force to replace it (existing subscriptions stop working)\n")
        return 1
    except ValueError as e:
        sys.stderr.write(f"error: {args.path}: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"error: {e.filename or args.out}: {e.strerror}\n")
        return 1
    sys.stdout.write(_describe(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
