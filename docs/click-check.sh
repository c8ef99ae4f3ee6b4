#!/bin/sh
# The operator's click check against a running `make run` server (docs/click-check.md):
# mint a KEY with the dev token key, follow the pixel link with wget, show the Location: line.
#
#   docs/click-check.sh [DESTINATION [MINT OPTIONS...]]
#   docs/click-check.sh 'https://shop.example/landing?utm_source=mail' --account 1 --profile 42 --message 7
#
# Environment (defaults are what `make run` uses):
#   HOST    127.0.0.1              PORT    8443
#   PYTHON  .venv/bin/python       CONFIG  conf/main.json, with the dev key dev-secrets/token-dev.key
#                                          (set CONFIG to a main.json that names its own token keys)
# Exit status: 0 when cookiesaver redirected to exactly DESTINATION, 1 otherwise, 2 when minting failed.
set -u
cd "$(dirname "$0")/.." || exit 2

DESTINATION=${1:-https://shop.example/landing?utm_source=mail}
[ $# -gt 0 ] && shift
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8443}
PYTHON=${PYTHON:-.venv/bin/python}

if [ -z "${CONFIG:-}" ]; then
    CONFIG=conf/main.json
    COOKIESAVER_TOKEN_KEYS='{"dev": "dev-secrets/token-dev.key"}'
    COOKIESAVER_TOKEN_CURRENT_KEY=dev
    export COOKIESAVER_TOKEN_KEYS COOKIESAVER_TOKEN_CURRENT_KEY
fi

KEY=$("$PYTHON" -m cookiesaver.token mint --config "$CONFIG" --url "$DESTINATION" "$@") || exit 2
LINK="https://$HOST:$PORT/pixel?_open_pix=1&k=$KEY"
echo "Link: $LINK"

# --max-redirect=0: show cookiesaver's redirect without fetching the destination.
LOCATION=$(wget --no-check-certificate --max-redirect=0 -O /dev/null "$LINK" 2>&1 | grep Location:)
echo "$LOCATION"

case "$LOCATION" in
    "Location: $DESTINATION "*|"Location: $DESTINATION") echo "OK: redirected to the destination byte for byte"; exit 0 ;;
    *) echo "FAIL: expected Location: $DESTINATION" >&2; exit 1 ;;
esac
