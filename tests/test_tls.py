"""CertificateStore: parse and check first, swap whole, pick by SNI."""

from __future__ import annotations

import os

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.devsecrets import self_signed
from cookiesaver.tls import CertificateError, CertificateStore, load_pair


class TLSTests(SynchronousTestCase):
    def pair(self, directory, names, name="fullchain.pem", keyname="privkey.pem"):
        os.makedirs(directory, exist_ok=True)
        cert, key = self_signed(names)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(cert)
        with open(os.path.join(directory, keyname), "wb") as f:
            f.write(key)
        return os.path.join(directory, name), os.path.join(directory, keyname)

    def test_mismatched_key_refused(self):
        """A key that does not match the certificate is one error naming both files."""
        d = self.mktemp()
        cert, _ = self.pair(d, ["a.test"])
        _, other_key = self.pair(d + "b", ["b.test"])
        e = self.assertRaises(CertificateError, load_pair, cert, other_key)
        self.assertIn("does not match", str(e))
        self.assertIn(other_key, str(e))

    def test_garbage_refused(self):
        """A garbage certificate file is refused with its name."""
        d = self.mktemp()
        cert, key = self.pair(d, ["a.test"])
        with open(cert, "wb") as f:
            f.write(b"garbage")
        e = self.assertRaises(CertificateError, load_pair, cert, key)
        self.assertIn(cert, str(e))

    def test_failed_reload_keeps_old_pair(self):
        """A broken replacement leaves the previous certificate in place."""
        d = self.mktemp()
        cert, key = self.pair(d, ["a.test"])
        store = CertificateStore(cert, key)
        store.load()
        before = store.default_pair.leaf
        with open(key, "wb") as f:
            f.write(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
        self.assertRaises(CertificateError, store.load)
        self.assertEqual(store.default_pair.leaf, before)

    def test_reload_swaps(self):
        """A good replacement is served after load()."""
        d = self.mktemp()
        cert, key = self.pair(d, ["a.test"])
        store = CertificateStore(cert, key)
        store.load()
        self.pair(d, ["new.test"])
        store.load()
        names = store.default_pair.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        self.assertEqual(names, ["new.test"])

    def test_sni_directory(self):
        """Each sub-directory of the SNI directory becomes a context for its host name."""
        d = self.mktemp()
        cert, key = self.pair(d, ["default.test"])
        self.pair(os.path.join(d, "sni", "one.test"), ["one.test"])
        self.pair(os.path.join(d, "sni", "two.test"), ["two.test"])
        store = CertificateStore(cert, key, os.path.join(d, "sni"))
        store.load()
        self.assertEqual(sorted(store._by_name), ["one.test", "two.test"])
