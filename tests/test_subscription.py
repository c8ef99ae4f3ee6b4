"""Validation of push subscriptions and worker events (cookiesaver.subscription)."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.trial.unittest import SynchronousTestCase

from cookiesaver.config import DEFAULT_PUSH_SERVICES
from cookiesaver.subscription import (
    FieldError,
    PushServices,
    b64url_decode,
    endpoint_hash,
    validate_endpoint,
    validate_event,
    validate_subscription,
)

SERVICES = PushServices.from_names(DEFAULT_PUSH_SERVICES)
FCM = "https://fcm.googleapis.com/fcm/send/dX1y2Z:APA91bH-example_token"


def b64url(raw: bytes, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode("ascii")
    return text if pad else text.rstrip("=")


def browser_keys() -> tuple[bytes, bytes]:
    """A p256dh point and auth secret made the way a browser makes them."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return point, os.urandom(16)


def subscription_body(endpoint: str = FCM, **extra: Any) -> dict[str, Any]:
    point, auth = browser_keys()
    body: dict[str, Any] = {"endpoint": endpoint, "expirationTime": None, "keys": {"p256dh": b64url(point), "auth": b64url(auth)}}
    body.update(extra)
    return body


class EndpointTests(SynchronousTestCase):
    """The endpoint must be an https URL on a known push service."""

    def assertRejected(self, endpoint: Any) -> None:
        with self.assertRaises(FieldError) as cm:
            validate_endpoint(endpoint, SERVICES)
        self.assertEqual(cm.exception.field, "endpoint", endpoint)

    def test_real_endpoints_accepted(self) -> None:
        """Endpoints of Chrome, Firefox, Safari and Edge pass unchanged."""
        for endpoint in (
            FCM,
            "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk",
            "https://web.push.apple.com/QGuQyavXutnMH8qHc",
            "https://wns2-par02p.notify.windows.com/w/?token=BQYAAAB",
            "https://fcm.googleapis.com:443/fcm/send/x",
        ):
            self.assertEqual(validate_endpoint(endpoint, SERVICES), endpoint)

    def test_uppercase_host_accepted(self) -> None:
        """Host names compare case-insensitively."""
        self.assertEqual(validate_endpoint("https://FCM.googleapis.COM/x", SERVICES), "https://FCM.googleapis.COM/x")

    def test_not_https(self) -> None:
        """http, ftp, javascript, data and scheme-relative URLs are refused."""
        for e in ("http://fcm.googleapis.com/x", "ftp://fcm.googleapis.com/x", "javascript:alert(1)", "//fcm.googleapis.com/x", "HTTPS://fcm.googleapis.com/x", "data:,x"):
            self.assertRejected(e)

    def test_ip_literals(self) -> None:
        """IPv4, IPv6 and inet_aton-style numeric hosts are refused."""
        for host in ("127.0.0.1", "10.0.0.1", "192.168.1.1", "169.254.169.254", "[::1]", "[fe80::1]", "[::ffff:127.0.0.1]", "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1", "127.1", "1.2.3.4"):
            self.assertRejected(f"https://{host}/x")

    def test_localhost(self) -> None:
        """localhost and its sub-domains are refused."""
        for host in ("localhost", "LOCALHOST", "push.localhost", "localhost.", "localhost:443"):
            self.assertRejected(f"https://{host}/x")

    def test_user_info(self) -> None:
        """User info, including the classic @ and backslash confusions, is refused."""
        for e in (
            "https://user:pass@fcm.googleapis.com/x",
            "https://fcm.googleapis.com@evil.com/x",
            "https://evil.com@fcm.googleapis.com/x",
            "https://fcm.googleapis.com:443@evil.com/x",
            "https://evil.com\\@fcm.googleapis.com/x",
        ):
            self.assertRejected(e)

    def test_other_port(self) -> None:
        """Any port other than 443, or an empty or padded one, is refused."""
        for port in ("8443", "80", "0443", "", "443x", "65979"):
            self.assertRejected(f"https://fcm.googleapis.com:{port}/x")

    def test_look_alikes(self) -> None:
        """Look-alike host names are refused."""
        for host in (
            "fcm.googleapis.com.evil.com",
            "fcm-googleapis.com",
            "evilfcm.googleapis.com.",
            "fcm.googleapis.com.",
            "fcm.googleapis.co",
            "xfcm.googleapis.com",
            "fcm.googleapis.com%2eevil.com",
            "fcm．googleapis．com",
            "fcm.googleapis.cоm",
            "fcm.googleapis.com_evil",
            "evil.com#fcm.googleapis.com",
        ):
            self.assertRejected(f"https://{host}/x")

    def test_subdomain_of_service(self) -> None:
        """A sub-domain of a listed service is accepted (WNS uses regional hosts)."""
        self.assertTrue(validate_endpoint("https://db5.notify.windows.com/w/?token=a", SERVICES))

    def test_fragment_whitespace_control(self) -> None:
        """Fragments, whitespace and control characters are refused."""
        for e in (FCM + "#frag", FCM + " ", " " + FCM, FCM + "\n", "https://fcm.googleapis.com/\x00", "https://fcm.googleapis.com\t/x"):
            self.assertRejected(e)

    def test_length(self) -> None:
        """At most 2 KiB is accepted."""
        base = "https://fcm.googleapis.com/"
        self.assertTrue(validate_endpoint(base + "a" * (2048 - len(base)), SERVICES))
        self.assertRejected(base + "a" * (2049 - len(base)))

    def test_not_a_string(self) -> None:
        """Non-strings and the empty string are refused."""
        bad: tuple[Any, ...] = (None, 1, [], {}, "")
        for e in bad:
            self.assertRejected(e)

    def test_configured_list(self) -> None:
        """Only the configured services count; configured names are normalized."""
        services = PushServices.from_names(["Push.Example.COM."])
        self.assertTrue(validate_endpoint("https://push.example.com/x", services))
        with self.assertRaises(FieldError):
            validate_endpoint(FCM, services)

    def test_hash(self) -> None:
        """The endpoint hash is hex SHA-256 of the exact string."""
        self.assertEqual(endpoint_hash(FCM), hashlib.sha256(FCM.encode()).hexdigest())


class SubscriptionTests(SynchronousTestCase):
    """PushSubscription.toJSON() as browsers send it."""

    def assertField(self, body: Any, field: str) -> None:
        with self.assertRaises(FieldError) as cm:
            validate_subscription(body, SERVICES)
        self.assertEqual(cm.exception.field, field)

    def test_browser_body(self) -> None:
        """A browser-made subscription validates to a normalized record."""
        body = subscription_body()
        sub = validate_subscription(body, SERVICES)
        self.assertEqual(sub.endpoint, FCM)
        self.assertEqual(sub.endpoint_hash, endpoint_hash(FCM))
        self.assertEqual(sub.p256dh, body["keys"]["p256dh"])
        self.assertEqual(sub.auth, body["keys"]["auth"])
        self.assertIsNone(sub.expiration_time)

    def test_expiration_number(self) -> None:
        """expirationTime may be a number (Firefox sends one)."""
        self.assertEqual(validate_subscription(subscription_body(expirationTime=1735689600000), SERVICES).expiration_time, 1735689600000)
        self.assertEqual(validate_subscription(subscription_body(expirationTime=1.5), SERVICES).expiration_time, 1.5)

    def test_expiration_missing(self) -> None:
        """A missing expirationTime is null."""
        body = subscription_body()
        del body["expirationTime"]
        self.assertIsNone(validate_subscription(body, SERVICES).expiration_time)

    def test_expiration_invalid(self) -> None:
        """expirationTime strings, booleans, negatives and objects are refused."""
        values: tuple[Any, ...] = ("1", True, -1, {}, [])
        for value in values:
            self.assertField(subscription_body(expirationTime=value), "expirationTime")

    def test_extra_members_ignored(self) -> None:
        """Unknown members are ignored and not part of the record."""
        body = subscription_body(options={"userVisibleOnly": True}, site="x", junk=[1])
        body["keys"]["extra"] = "y"
        sub = validate_subscription(body, SERVICES)
        self.assertEqual({a.name for a in sub.__attrs_attrs__}, {"endpoint", "endpoint_hash", "p256dh", "auth", "expiration_time"})

    def test_padded_keys(self) -> None:
        """Padded base64url keys are accepted and stored unpadded."""
        point, auth = browser_keys()
        body = {"endpoint": FCM, "keys": {"p256dh": b64url(point, pad=True), "auth": b64url(auth, pad=True)}}
        sub = validate_subscription(body, SERVICES)
        self.assertEqual(sub.p256dh, b64url(point))
        self.assertEqual(sub.auth, b64url(auth))

    def test_endpoint_missing(self) -> None:
        """A missing endpoint is named."""
        body = subscription_body()
        del body["endpoint"]
        self.assertField(body, "endpoint")

    def test_keys_missing(self) -> None:
        """Missing or non-object keys are named."""
        keyss: tuple[Any, ...] = (None, "x", [])
        for keys in keyss:
            self.assertField(subscription_body(keys=keys), "keys")
        body = subscription_body()
        del body["keys"]
        self.assertField(body, "keys")
        self.assertField(subscription_body(keys={"auth": b64url(os.urandom(16))}), "keys.p256dh")
        self.assertField(subscription_body(keys={"p256dh": b64url(browser_keys()[0])}), "keys.auth")

    def test_p256dh_not_on_curve(self) -> None:
        """A 65-byte point that is not on P-256 is refused."""
        point = bytearray(browser_keys()[0])
        point[-1] ^= 1
        body = subscription_body()
        body["keys"]["p256dh"] = b64url(bytes(point))
        self.assertField(body, "keys.p256dh")

    def test_p256dh_shapes(self) -> None:
        """Compressed points, wrong lengths, standard base64 and non-strings are refused."""
        point = browser_keys()[0]
        compressed = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
        for value in (b64url(compressed), b64url(point[:64]), b64url(point + b"\0"), b64url(b"\x04" + b"\0" * 64), base64.b64encode(b"\xfb" * 65).decode(), "not base64!", 123, None, ""):
            body = subscription_body()
            body["keys"]["p256dh"] = value
            self.assertField(body, "keys.p256dh")

    def test_auth_length(self) -> None:
        """auth must decode to exactly 16 bytes."""
        for value in (b64url(os.urandom(15)), b64url(os.urandom(17)), "", "a", "+/+/+/+/+/+/+/+/+/+/+w", 16, None):
            body = subscription_body()
            body["keys"]["auth"] = value
            self.assertField(body, "keys.auth")

    def test_not_an_object(self) -> None:
        """A body that is not an object is named as such."""
        bodies: tuple[Any, ...] = ([], "x", None, 1)
        for body in bodies:
            self.assertField(body, "body")

    def test_bad_endpoint_named(self) -> None:
        """An SSRF-shaped endpoint in a full body names the endpoint."""
        self.assertField(subscription_body(endpoint="https://169.254.169.254/latest/meta-data"), "endpoint")

    def test_b64url_decode(self) -> None:
        """base64url decodes with or without padding and refuses impossible lengths."""
        self.assertEqual(b64url_decode("AQ"), b"\x01")
        self.assertEqual(b64url_decode("AQ=="), b"\x01")
        self.assertRaises(ValueError, b64url_decode, "A")
        self.assertRaises(ValueError, b64url_decode, "A+==")


class EventTests(SynchronousTestCase):
    """Worker reports."""

    HASH = "a" * 64

    def test_delivered(self) -> None:
        """A delivered report validates."""
        e = validate_event({"type": "delivered", "message": "m1", "subscription": self.HASH})
        self.assertEqual((e.type, e.message, e.subscription, e.action), ("delivered", "m1", self.HASH, None))

    def test_clicked_with_action(self) -> None:
        """A click carries its action id."""
        self.assertEqual(validate_event({"type": "clicked", "message": "m", "subscription": self.HASH, "action": "buy"}).action, "buy")

    def test_dedupe_id(self) -> None:
        """The id is SHA-256 of message|subscription|type, independent of the action."""
        a = validate_event({"type": "clicked", "message": "m", "subscription": self.HASH, "action": "x"})
        b = validate_event({"type": "clicked", "message": "m", "subscription": self.HASH})
        self.assertEqual(a.id, b.id)
        self.assertEqual(a.id, hashlib.sha256(f"m|{self.HASH}|clicked".encode()).hexdigest())
        self.assertNotEqual(a.id, validate_event({"type": "closed", "message": "m", "subscription": self.HASH}).id)

    def test_bad_members(self) -> None:
        """Each bad member is named."""
        good = {"type": "delivered", "message": "m", "subscription": self.HASH}
        cases: list[tuple[dict[str, Any], str]] = [
            ({"type": "opened"}, "type"),
            ({"type": None}, "type"),
            ({"message": ""}, "message"),
            ({"message": "m" * 129}, "message"),
            ({"message": 5}, "message"),
            ({"message": "a\nb"}, "message"),
            ({"subscription": "A" * 64}, "subscription"),
            ({"subscription": "a" * 63}, "subscription"),
            ({"subscription": None}, "subscription"),
            ({"action": "a" * 65}, "action"),
            ({"action": 3}, "action"),
        ]
        for change, field in cases:
            with self.assertRaises(FieldError) as cm:
                validate_event({**good, **change})
            self.assertEqual(cm.exception.field, field, change)

    def test_invalid_without_message(self) -> None:
        """An unreadable payload is reported without a message id."""
        self.assertIsNone(validate_event({"type": "invalid", "subscription": self.HASH}).message)
