"""Per-site VAPID keys and the key CLI (cookiesaver.vapid)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.config import ConfigError, SiteConfig
from cookiesaver.subscription import b64url_decode, b64url_encode
from cookiesaver.vapid import VapidError, VapidKeys, generate, key_id, main


def site(path: str | None, subject: str | None = "mailto:ops@example.com", site_id: str = "shop") -> SiteConfig:
    return SiteConfig(id=site_id, origins=("https://www.example.com",), vapid_private_key=path, vapid_subject=subject)


class VapidKeysTests(SynchronousTestCase):
    """Loading keys from the sites' config."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def pem(self, name: str = "k.pem") -> str:
        path = os.path.join(self.dir, name)
        generate(path)
        return path

    def test_loads_public_key(self) -> None:
        """The public key is the 65-byte uncompressed point, unpadded base64url, with its key id."""
        path = self.pem()
        keys = VapidKeys.from_sites({"shop": site(path)})
        key = keys["shop"]
        raw = b64url_decode(key.public_b64url)
        self.assertEqual(len(raw), 65)
        self.assertEqual(raw[0], 4)
        self.assertNotIn("=", key.public_b64url)
        self.assertEqual(key.key_id, b64url_encode(hashlib.sha256(raw).digest())[:16])
        self.assertEqual(len(key.key_id), 16)
        self.assertEqual(key.subject, "mailto:ops@example.com")
        self.assertEqual(raw, key.private_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def test_sites_without_key_skipped(self) -> None:
        """A site without vapid_private_key has no key (push is off for it)."""
        keys = VapidKeys.from_sites({"shop": site(self.pem()), "blog": site(None, site_id="blog")})
        self.assertEqual(sorted(keys), ["shop"])
        self.assertNotIn("blog", keys)

    def test_missing_file(self) -> None:
        """A missing file is one line naming the site and the file."""
        path = os.path.join(self.dir, "nope.pem")
        with self.assertRaises(VapidError) as cm:
            VapidKeys.from_sites({"shop": site(path)})
        message = str(cm.exception)
        self.assertIn("COOKIESAVER_SITES.shop.vapid_private_key", message)
        self.assertIn(path, message)
        self.assertIn("not found", message)
        self.assertNotIn("\n", message)
        self.assertIsInstance(cm.exception, ConfigError)

    def test_not_pem(self) -> None:
        """Garbage is refused with one line."""
        path = os.path.join(self.dir, "bad.pem")
        with open(path, "w") as f:
            f.write("hello\n")
        with self.assertRaises(VapidError) as cm:
            VapidKeys.from_sites({"shop": site(path)})
        self.assertIn("not a PEM private key", str(cm.exception))

    def test_wrong_curve_and_rsa(self) -> None:
        """P-384 and RSA keys are refused."""
        for private in (ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)):
            path = os.path.join(self.dir, "other.pem")
            with open(path, "wb") as f:
                f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            with self.assertRaises(VapidError) as cm:
                VapidKeys.from_sites({"shop": site(path)})
            self.assertIn("P-256", str(cm.exception))

    def test_encrypted(self) -> None:
        """An encrypted PEM is refused with a hint."""
        path = os.path.join(self.dir, "enc.pem")
        private = ec.generate_private_key(ec.SECP256R1())
        with open(path, "wb") as f:
            f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
        with self.assertRaises(VapidError) as cm:
            VapidKeys.from_sites({"shop": site(path)})
        self.assertIn("encrypted", str(cm.exception))

    def test_subject_required(self) -> None:
        """A key without a vapid_subject is a config error naming the key."""
        with self.assertRaises(VapidError) as cm:
            VapidKeys.from_sites({"shop": site(self.pem(), subject=None)})
        self.assertIn("COOKIESAVER_SITES.shop.vapid_subject", str(cm.exception))

    def test_key_id_changes_with_key(self) -> None:
        """Two keys have two key ids, so a rotation is detectable."""
        a = VapidKeys.from_sites({"shop": site(self.pem("a.pem"))})["shop"]
        b = VapidKeys.from_sites({"shop": site(self.pem("b.pem"))})["shop"]
        self.assertNotEqual(a.key_id, b.key_id)
        self.assertEqual(key_id(a.public_point), a.key_id)

    def test_private_key_not_in_repr(self) -> None:
        """The private key never shows up in logs through repr."""
        key = VapidKeys.from_sites({"shop": site(self.pem())})["shop"]
        self.assertNotIn("EllipticCurvePrivateKey", repr(key))
        self.assertNotIn("private_key=", repr(key))


class CommandLineTests(SynchronousTestCase):
    """python -m cookiesaver.vapid."""

    def setUp(self) -> None:
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(list(argv))
        return rc, out.getvalue(), err.getvalue()

    def test_generate(self) -> None:
        """generate writes a PKCS#8 PEM with mode 0600 and prints the public key that loads back."""
        path = os.path.join(self.dir, "shop.pem")
        rc, out, err = self.run_main("generate", "--out", path)
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            self.assertTrue(f.read().startswith(b"-----BEGIN PRIVATE KEY-----"))
        key = VapidKeys.from_sites({"shop": site(path)})["shop"]
        self.assertIn(key.public_b64url, out)
        self.assertIn(key.key_id, out)

    def test_generate_refuses_overwrite(self) -> None:
        """An existing key is not replaced without --force: that would orphan every subscription."""
        path = os.path.join(self.dir, "shop.pem")
        self.run_main("generate", "--out", path)
        with open(path, "rb") as f:
            before = f.read()
        rc, _out, err = self.run_main("generate", "--out", path)
        self.assertEqual(rc, 1)
        self.assertIn("already exists", err)
        self.assertEqual(err.count("\n"), 1)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)
        rc, _out, err = self.run_main("generate", "--out", path, "--force")
        self.assertEqual(rc, 0)
        with open(path, "rb") as f:
            self.assertNotEqual(f.read(), before)

    def test_generate_bad_directory(self) -> None:
        """An unwritable path is one line on stderr."""
        rc, _out, err = self.run_main("generate", "--out", os.path.join(self.dir, "missing", "k.pem"))
        self.assertEqual(rc, 1)
        self.assertEqual(err.count("\n"), 1)
        self.assertNotIn("Traceback", err)

    def test_show(self) -> None:
        """show prints the public key of an existing file."""
        path = os.path.join(self.dir, "shop.pem")
        _, generated, _ = self.run_main("generate", "--out", path)
        rc, out, _err = self.run_main("show", path)
        self.assertEqual((rc, out), (0, generated))

    def test_show_bad_file(self) -> None:
        """show on garbage is one line."""
        path = os.path.join(self.dir, "x")
        with open(path, "w") as f:
            f.write("x")
        rc, _out, err = self.run_main("show", path)
        self.assertEqual(rc, 1)
        self.assertEqual(err, f"error: {path}: not a PEM private key\n")

    def test_module_entry_point(self) -> None:
        """python -m cookiesaver.vapid runs as a module."""
        path = os.path.join(self.dir, "m.pem")
        result = subprocess.run([sys.executable, "-m", "cookiesaver.vapid", "generate", "--out", path], check=False, capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("applicationServerKey", result.stdout)
