"""main.json + environment + options -> Config, and the one-line errors."""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.config import ConfigError, load, reference_markdown

PLAIN = {"COOKIESAVER_SSL_ON": "false"}


class ConfigTests(SynchronousTestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_only_cookiesaver_keys_are_read(self):
        """Other services' keys in main.json are ignored without a warning."""
        path = self.write(json.dumps({"MAILER_HOST": "x", "COOKIESAVER_SSL_ON": False, "COOKIESAVER_PUBLIC_PORT": 8080}))
        loaded = load(path, {})
        self.assertEqual(loaded.config.listen.port, 8080)
        self.assertEqual(loaded.warnings, ())

    def test_unknown_key_warns_with_closest(self):
        """An unknown COOKIESAVER_* key is a warning naming the closest known key."""
        path = self.write(json.dumps({"COOKIESAVER_SSL_ON": False, "COOKIESAVER_PUBLIC_PROT": 1}))
        loaded = load(path, {})
        self.assertEqual(len(loaded.warnings), 1)
        self.assertIn("COOKIESAVER_PUBLIC_PORT", loaded.warnings[0])

    def test_environment_overrides_file_and_options_override_environment(self):
        """Precedence is options > environment > file > default, lists given as JSON text."""
        path = self.write(json.dumps({"COOKIESAVER_SSL_ON": False, "COOKIESAVER_PUBLIC_PORT": 1000}))
        env = {"COOKIESAVER_PUBLIC_PORT": "2000", "COOKIESAVER_TRUSTED_PROXIES": '["10.0.0.0/8"]'}
        self.assertEqual(load(path, env).config.listen.port, 2000)
        self.assertEqual(load(path, env, {"COOKIESAVER_PUBLIC_PORT": "3000"}).config.listen.port, 3000)
        self.assertEqual(str(load(path, env).config.trusted_proxies[0]), "10.0.0.0/8")

    def test_invalid_json_names_line_and_column(self):
        """Invalid JSON is one line naming the file, line and column."""
        path = self.write('{\n  "COOKIESAVER_SSL_ON": false,,\n}')
        e = self.assertRaises(ConfigError, load, path, {})
        self.assertIn(path, str(e))
        self.assertIn("line 2 column", str(e))
        self.assertNotIn("\n", str(e))

    def test_missing_file(self):
        """A missing file is one line naming it."""
        e = self.assertRaises(ConfigError, load, "/nonexistent/main.json", {})
        self.assertEqual(str(e), "config file /nonexistent/main.json: not found")

    def test_wrong_type_names_key(self):
        """A wrong type names the key, the source and what was expected."""
        path = self.write(json.dumps({"COOKIESAVER_SSL_ON": False, "COOKIESAVER_PUBLIC_PORT": "443"}))
        e = self.assertRaises(ConfigError, load, path, {})
        self.assertIn("COOKIESAVER_PUBLIC_PORT", str(e))
        self.assertIn("integer", str(e))
        e = self.assertRaises(ConfigError, load, None, {**PLAIN, "COOKIESAVER_TRUSTED_PROXIES": '["nope"]'})
        self.assertIn("COOKIESAVER_TRUSTED_PROXIES", str(e))

    def test_tls_requires_paths(self):
        """SSL on without certificate paths is an error naming the key."""
        e = self.assertRaises(ConfigError, load, None, {})
        self.assertIn("COOKIESAVER_SSL_CRT_PATH", str(e))

    def test_example_config_loads(self):
        """conf/main.json loads with only the listener, certificate and MongoDB keys overridden."""
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        loaded = load(os.path.join(here, "conf", "main.json"), {"COOKIESAVER_SSL_CRT_PATH": "/c", "COOKIESAVER_SSL_KEY_PATH": "/k", "COOKIESAVER_PUBLIC_PORT": "8443"})
        self.assertEqual(loaded.warnings, ())
        self.assertEqual(loaded.config.mongo.uri, "embedded")

    def test_cookie_max_age_capped(self):
        """Cookie Max-Age is capped at 400 days whatever is configured."""
        config = load(None, {**PLAIN, "COOKIESAVER_COOKIE_MAX_AGE": str(10 * 365 * 86400)}).config
        self.assertEqual(config.cookie.max_age, 400 * 86400)

    def test_reference_lists_every_key(self):
        """The generated reference documents the platform keys."""
        text = reference_markdown()
        for key in ("COOKIESAVER_PUBLIC_IP", "COOKIESAVER_SSL_KEY_PATH", "COOKIESAVER_MONGO_URI", "COOKIESAVER_SITES"):
            self.assertIn(key, text)

    def test_unparsable_mongo_uri_refused_without_credentials(self):
        """A mongodb:// URI the driver cannot parse is one line naming the key and its source, never the password."""
        e = self.assertRaises(ConfigError, load, None, {**PLAIN, "COOKIESAVER_MONGO_URI": "mongodb://user:s3cretpw@[::1/"})
        self.assertIn("COOKIESAVER_MONGO_URI in the environment", str(e))
        self.assertNotIn("s3cretpw", str(e))
        e = self.assertRaises(ConfigError, load, None, {**PLAIN, "COOKIESAVER_MONGO_URI": "mongodb://h:99999"})
        self.assertIn("Port", str(e))
