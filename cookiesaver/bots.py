"""Bot rules: what to do with a request from a known crawler, scanner or address.

Two files in the platform's shape (docs/bots.md), each a JSON list of rules::

    bots_ua.json  [{"pattern": "Googlebot\\\\/", "action": "event_ignore"}, ...]
    bots_ip.json  [{"pattern": "192.0.2.0/24", "action": "ip_ignore"}, ...]

API::

    rules = BotRules.from_files(config.bots.ua_path, config.bots.ip_path)  # ConfigError naming file and rule
    action = rules.match(user_agent_bytes_or_None, resolved.address)       # str | None

Precedence when several rules match: C{block} > C{event_ignore} >
C{ua_ignore} > C{ip_ignore}. Immutable: a reload builds a new instance and
swaps the reference.

Speed. The shipped list has ~1500 regexes; Python's C{re} tries every branch
of a big alternation at every position (about 2 ms per User-Agent here), so
instead each pattern's longest mandatory literal is found at load, and a
User-Agent only runs the few patterns whose literal's first three
characters occur in it (tens of microseconds). Patterns with no such
literal are combined into one alternation per action and always run.
Verdicts are cached per User-Agent in a bounded LRU. IP rules are kept as
per-prefix-length sets of network integers, so a lookup costs one set
probe per distinct prefix length.
"""

from __future__ import annotations

import functools
import importlib.resources
import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

from cookiesaver.config import ConfigError

BLOCK = "block"
EVENT_IGNORE = "event_ignore"
UA_IGNORE = "ua_ignore"
IP_IGNORE = "ip_ignore"

#: Strongest first; match() returns the strongest action that matched.
PRECEDENCE = (BLOCK, EVENT_IGNORE, UA_IGNORE, IP_IGNORE)
_RANK = {action: rank for rank, action in enumerate(PRECEDENCE)}
UA_ACTIONS = frozenset({BLOCK, EVENT_IGNORE, UA_IGNORE})
IP_ACTIONS = frozenset({BLOCK, EVENT_IGNORE, IP_IGNORE})

#: Only this prefix of a User-Agent is matched; it also bounds the cache's memory.
UA_PREFIX = 1024
#: Distinct User-Agents whose verdict is remembered.
UA_CACHE_SIZE = 8192

_LITERAL_MIN = 3
_QUANTIFIERS = "?*{"
_META = ".^$|()[]+?*{}\\"


def mandatory_literal(pattern: str) -> str:
    """
    The longest run of literal characters every match of C{pattern} must contain, lower-cased.

    Conservative: returns "" when unsure (top-level alternation, flags, escapes it does not know).
    """
    if pattern.startswith("(?") or re.search(r"\\[xuUN0-9]", pattern):
        # Flags, or escapes naming a character by number: not worth decoding here.
        return ""
    runs: list[str] = []
    run: list[str] = []
    depth = 0
    i = 0
    n = len(pattern)

    def close() -> None:
        if run:
            runs.append("".join(run))
            run.clear()

    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if depth == 0 and not nxt.isalnum():  # an escaped punctuation character is a literal
                char = nxt
                i += 2
            else:
                close()
                i += 2
                continue
        elif c == "[":
            close()
            end = i + 1
            if end < n and pattern[end] == "^":
                end += 1
            if end < n and pattern[end] == "]":
                end += 1
            while end < n and pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            i = end + 1
            continue
        elif c == "(":
            close()
            depth += 1
            i += 1
            continue
        elif c == ")":
            depth -= 1
            i += 1
            continue
        elif c == "|":
            if depth == 0:
                return ""
            i += 1
            continue
        elif c in _META:
            close()
            i += 1
            continue
        else:
            char = c
            i += 1
        if depth:
            continue
        if i < n and pattern[i] in _QUANTIFIERS:
            # The character may be absent: it ends the run without joining it.
            close()
            if pattern[i] == "{":
                end = pattern.find("}", i)
                i = n if end == -1 else end + 1
            else:
                i += 1
            continue
        run.append(char)
    close()
    best = max(runs, key=len, default="")
    return best.lower() if len(best) >= _LITERAL_MIN else ""


class BotRules:
    """Compiled bot rules. Immutable; C{match} is safe to call per request."""

    def __init__(
        self,
        ua_rules: Iterable[tuple[str, str]] = (),
        ip_rules: Iterable[tuple[str, str]] = (),
        ua_source: str = "User-Agent rules",
        ip_source: str = "IP rules",
    ) -> None:
        """
        @param ua_rules: (regex, action) pairs.
        @param ip_rules: (address or CIDR, action) pairs.
        @param ua_source: where C{ua_rules} came from, for error messages; C{ip_source} likewise.
        @raise ConfigError: one line naming the source and the rule index.
        """
        # first three literal characters -> [(literal, compiled, action)]
        index: dict[str, list[tuple[str, re.Pattern[str], str]]] = {}
        slow: dict[str, list[str]] = {}
        self.ua_count = 0
        for i, (pattern, action) in enumerate(ua_rules):
            compiled = _compile(pattern, action, UA_ACTIONS, f"{ua_source} rule {i}")
            literal = mandatory_literal(pattern)
            if literal:
                index.setdefault(literal[:_LITERAL_MIN], []).append((literal, compiled, action))
            else:
                slow.setdefault(action, []).append(pattern)
            self.ua_count += 1
        self._index = {k: tuple(v) for k, v in index.items()}
        self._index_keys = frozenset(self._index)
        self._slow = tuple(
            (re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE), action)
            for action, patterns in sorted(slow.items(), key=lambda item: _RANK[item[0]])
        )
        # action -> {(version, prefixlen): set of network ints}
        nets: dict[str, dict[tuple[int, int], set[int]]] = {}
        self.ip_count = 0
        for i, (text, action) in enumerate(ip_rules):
            where = f"{ip_source} rule {i}"
            if action not in IP_ACTIONS:
                raise ConfigError(f"{where}: action {action!r} is not one of {', '.join(sorted(IP_ACTIONS))}")
            try:
                net = ipaddress.ip_network(text, strict=False)
            except (ValueError, TypeError):
                raise ConfigError(f"{where}: {text!r} is not an IP address or CIDR") from None
            net = _unmap(net)
            nets.setdefault(action, {}).setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
            self.ip_count += 1
        self._nets = tuple(
            (action, tuple((version, (32 if version == 4 else 128) - plen, frozenset(ints)) for (version, plen), ints in by_len.items()))
            for action, by_len in sorted(nets.items(), key=lambda item: _RANK[item[0]])
        )
        self._match_ua = functools.lru_cache(maxsize=UA_CACHE_SIZE)(self._match_ua_uncached)

    @classmethod
    def from_files(cls, ua_path: str | None, ip_path: str | None) -> BotRules:
        """Load both files; None means the shipped default in C{cookiesaver/data/}. @raise ConfigError."""
        ua_source, ua = _load(ua_path, "bots_ua.json")
        ip_source, ip = _load(ip_path, "bots_ip.json")
        return cls(ua, ip, ua_source, ip_source)

    def match(self, user_agent: bytes | None, address: str | None) -> str | None:
        """The strongest action for this client, or None for an ordinary visitor."""
        ip_action = self._match_ip(address) if address and self._nets else None
        if ip_action == BLOCK:
            return BLOCK
        ua_action = self._match_ua(user_agent[:UA_PREFIX]) if user_agent else None
        if ua_action is None or ip_action is None:
            return ua_action or ip_action
        return ua_action if _RANK[ua_action] < _RANK[ip_action] else ip_action

    def _match_ip(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
            ip = ip.ipv4_mapped  # type: ignore[union-attr]
        value = int(ip)
        version = ip.version
        for action, groups in self._nets:
            for net_version, shift, ints in groups:
                if net_version == version and (value >> shift) << shift in ints:
                    return action
        return None

    def _match_ua_uncached(self, user_agent: bytes) -> str | None:
        ua = user_agent.decode("latin-1").lower()
        best: str | None = None
        best_rank = len(PRECEDENCE)
        n = len(ua)
        keys = self._index_keys & {ua[i : i + _LITERAL_MIN] for i in range(n - _LITERAL_MIN + 1)}
        for key in keys:
            for literal, compiled, action in self._index[key]:
                if _RANK[action] < best_rank and literal in ua and compiled.search(ua):
                    best, best_rank = action, _RANK[action]
                    if best_rank == 0:
                        return best
        for compiled, action in self._slow:
            if _RANK[action] >= best_rank:
                break
            if compiled.search(ua):
                return action
        return best


def _compile(pattern: Any, action: Any, allowed: frozenset[str], where: str) -> re.Pattern[str]:
    if action not in allowed:
        raise ConfigError(f"{where}: action {action!r} is not one of {', '.join(sorted(allowed))}")
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where}: pattern must be a non-empty string")
    if re.search(r"\\[1-9]|\(\?P=", pattern):
        raise ConfigError(f"{where}: backreferences are not supported")
    try:
        # Wrapped as it will be in an alternation, so errors show up here, with the index.
        return re.compile(f"(?:{pattern})", re.IGNORECASE)
    except re.error as e:
        raise ConfigError(f"{where}: invalid regex {pattern!r}: {e}") from None


def _unmap(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """::ffff:192.0.2.0/120 -> 192.0.2.0/24, so rules match the resolver's normalised addresses."""
    if net.version == 6 and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped  # type: ignore[union-attr]
        if mapped is not None:
            return ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    return net


def _load(path: str | None, shipped: str) -> tuple[str, list[tuple[str, str]]]:
    """(source name, (pattern, action) pairs) from a rules file. @raise ConfigError: naming the file and rule."""
    name = f"bot rules {path}" if path else f"shipped bot rules {shipped}"
    try:
        if path is None:
            data = importlib.resources.files("cookiesaver").joinpath("data", shipped).read_bytes()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise ConfigError(f"{name}: {e.strerror or e}") from None
    try:
        rules = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(rules, list):
        raise ConfigError(f"{name}: expected a JSON list of rules")
    pairs: list[tuple[str, str]] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or "pattern" not in rule or "action" not in rule:
            raise ConfigError(f"{name} rule {i}: expected an object with \"pattern\" and \"action\"")
        if not isinstance(rule["pattern"], str):
            raise ConfigError(f"{name} rule {i}: pattern must be a string")
        pairs.append((rule["pattern"], rule["action"]))
    return name, pairs
