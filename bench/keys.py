"""Click KEYs for the benchmark: many distinct, valid tokens minted with the server's current key.

    python -m bench.keys --config /etc/platform/main.json --count 20000 --out keys.txt

One KEY per line (what click.lua and mix.lua read). Each has its own URL,
profile and message, so every click is a different subscriber's; the
profiles are in a range a test account can use (PROFILE_BASE and up).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from cookiesaver.token import TokenKeys, mint

PROFILE_BASE = 900_000_000


def generate(keys: TokenKeys, count: int, issued: int, account: str = "bench") -> list[str]:
    """C{count} distinct KEYs, each for its own landing URL, profile and message."""
    return [
        mint(
            keys,
            f"https://shop.localhost/landing/{n}?utm_source=mail&utm_campaign=bench",
            account=account,
            profile=str(PROFILE_BASE + n),
            message=str(n % 97),
            issued=issued,
        )
        for n in range(count)
    ]


def write_keys(path: str, tokens: Sequence[str]) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write("\n".join(tokens) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    from cookiesaver.config import ConfigError, load

    parser = argparse.ArgumentParser(prog="python -m bench.keys", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="main.json (COOKIESAVER_* environment variables apply too)")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--out", default="keys.txt")
    args = parser.parse_args(argv)
    try:
        keys = TokenKeys.from_config(load(args.config).config.tokens)
    except ConfigError as e:
        sys.stderr.write(f"{parser.prog}: {e}\n")
        return 2
    write_keys(args.out, generate(keys, args.count, int(time.time())))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
