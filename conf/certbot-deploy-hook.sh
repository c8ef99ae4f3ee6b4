#!/bin/sh
# certbot deploy hook: install the renewed pair where the cookiesaver user can
# read it, then ask cookiesaver to reload (SIGHUP).
#
#   certbot renew --deploy-hook /etc/cookiesaver/certbot-deploy-hook.sh
#
# letsencrypt's live/ private keys are readable by root only, and cookiesaver
# drops privileges after binding 443, so it cannot read them on reload.
# COOKIESAVER_SSL_CRT_PATH / COOKIESAVER_SSL_KEY_PATH must point at the copies
# made here (/etc/cookiesaver/tls by default).
set -eu
DEST=${COOKIESAVER_TLS_DIR:-/etc/cookiesaver/tls}
GROUP=${COOKIESAVER_GROUP:-cookiesaver}
: "${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE}"

install -d -m 0750 -g "$GROUP" "$DEST"
# Write under temporary names, then rename: a reload never sees half a file.
install -m 0644 "$RENEWED_LINEAGE/fullchain.pem" "$DEST/.fullchain.pem.new"
install -m 0640 -g "$GROUP" "$RENEWED_LINEAGE/privkey.pem" "$DEST/.privkey.pem.new"
mv -f "$DEST/.privkey.pem.new" "$DEST/privkey.pem"
mv -f "$DEST/.fullchain.pem.new" "$DEST/fullchain.pem"

systemctl reload 'cookiesaver*.service' 2>/dev/null || pkill -HUP -f 'twistd.* cookiesaver' || true
