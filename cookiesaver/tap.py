"""``twistd cookiesaver``: command-line options and makeService.

Only L{makeService} touches the global reactor, inside the function.
Every configuration problem ends the process with one line on stderr and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from cookiesaver import config as configmod


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve a marketing platform's pixel and push domain. Settings come from the platform's main.json "
        "(only COOKIESAVER_* keys are read), then COOKIESAVER_* environment variables, then these options. "
        "The full list of keys is in docs/config.md."
    )
    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", os.environ.get("COOKIESAVER_CONFIG"), "Path to the platform's main.json (default: $COOKIESAVER_CONFIG)."],
        ["ip", None, None, "Listen address (COOKIESAVER_PUBLIC_IP)."],
        ["port", None, None, "Listen port (COOKIESAVER_PUBLIC_PORT)."],
        ["cert", None, None, "fullchain.pem (COOKIESAVER_SSL_CRT_PATH)."],
        ["key", None, None, "privkey.pem (COOKIESAVER_SSL_KEY_PATH)."],
        ["mongo-uri", None, None, "'embedded' or a mongodb:// URI (COOKIESAVER_MONGO_URI)."],
        ["data-dir", None, None, "Local state directory (COOKIESAVER_DATA_DIR)."],
    ]
    optFlags: ClassVar[list[list[str | None]]] = [
        ["no-ssl", None, "Serve plain HTTP behind a TLS-terminating proxy (COOKIESAVER_SSL_ON=false)."],
        ["check", None, "Load and check the configuration and certificates, print the result, and exit."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["set"] = {}

    def opt_listen(self, endpoint: str) -> None:
        """Also listen on this Twisted endpoint string, plain HTTP (repeatable), e.g. tcp:8080:interface=127.0.0.1 or unix:/run/cookiesaver.sock"""
        self["listen"].append(endpoint)

    def opt_set(self, assignment: str) -> None:
        """Override any key: --set COOKIESAVER_NAME=VALUE (repeatable; lists and objects as JSON)."""
        name, sep, value = assignment.partition("=")
        if not sep or not name.startswith(configmod.PREFIX):
            raise fail(f"--set expects COOKIESAVER_NAME=VALUE, got {assignment!r}")
        if name not in configmod.KEYS_BY_NAME:
            raise fail(f"--set: unknown key {name}{configmod.closest_hint(name)}")
        self["set"][name] = value

    def overrides(self) -> dict[str, Any]:
        """The options as C{COOKIESAVER_*} values (strings, parsed like environment variables)."""
        values = dict(self["set"])
        for option, key in (
            ("ip", "PUBLIC_IP"),
            ("port", "PUBLIC_PORT"),
            ("cert", "SSL_CRT_PATH"),
            ("key", "SSL_KEY_PATH"),
            ("mongo-uri", "MONGO_URI"),
            ("data-dir", "DATA_DIR"),
        ):
            if self[option] is not None:
                values[configmod.PREFIX + key] = self[option]
        if self["no-ssl"]:
            values[configmod.PREFIX + "SSL_ON"] = "false"
        return values


def fail(message: str) -> SystemExit:
    """One line on stderr, exit status 1."""
    return SystemExit(f"cookiesaver: {message}")


def load_config(options: Options) -> configmod.Config:
    try:
        loaded = configmod.load(options["config"], os.environ, options.overrides(), tuple(options["listen"]))
    except configmod.ConfigError as e:
        raise fail(str(e)) from None
    for warning in loaded.warnings:
        print(f"cookiesaver: warning: {warning}", file=sys.stderr)
    return loaded.config


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from cookiesaver.service import StartupError, build_service

    config = load_config(options)
    try:
        top = build_service(config, reactor)
    except StartupError as e:
        raise fail(str(e)) from None
    if options["check"]:
        print(f"cookiesaver: configuration from {config.source} is valid")
        raise SystemExit(0)
    return top
