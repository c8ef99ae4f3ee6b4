"""The twistd plugin ships in the wheel and is found after a plain install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

from twisted.trial.unittest import TestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PackagingTests(TestCase):
    def test_wheel_contains_plugin_and_is_found_after_plain_install(self):
        """pip builds a wheel with twisted/plugins/cookiesaver_plugin.py (no __init__.py), and twistd's plugin scan finds it there."""
        out = os.path.abspath(self.mktemp())
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, REPO],
            check=True, capture_output=True, timeout=300,
        )
        [wheel] = [f for f in os.listdir(out) if f.endswith(".whl")]
        names = zipfile.ZipFile(os.path.join(out, wheel)).namelist()
        self.assertIn("twisted/plugins/cookiesaver_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("cookiesaver/static/pixel.js", names)
        self.assertIn("cookiesaver/data/bots_ua.json", names)
        target = os.path.join(out, "site")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, os.path.join(out, wheel)],
            check=True, capture_output=True, timeout=300,
        )
        # Drop the working tree from the path so only the installed copy can be found.
        probe = (
            "import sys; sys.path = [p for p in sys.path if p.rstrip('/') != %r]; sys.path.insert(0, %r)\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "import cookiesaver\n"
            "assert cookiesaver.__file__.startswith(%r), cookiesaver.__file__\n"
            "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))\n"
        ) % (REPO, target, target)
        result = subprocess.run([sys.executable, "-c", probe], cwd=out, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("'cookiesaver'", result.stdout)

    def test_help_documents_every_option(self):
        """twistd cookiesaver --help lists every option."""
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run([twistd, "cookiesaver", "--help"], capture_output=True, text=True, timeout=60)
        for option in ("--config", "--listen", "--ip", "--port", "--cert", "--key", "--no-ssl", "--mongo-uri", "--data-dir", "--set", "--check"):
            self.assertIn(option, result.stdout)
