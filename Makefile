# The README's two commands: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEV := dev-secrets
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run check test unit venv devsecrets bench lint clean system-deps

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' --config-settings editable_mode=compat
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

# Self-signed certificate for pxl.localhost and development secrets, never committed.
devsecrets: venv
	$(BIN)/python -m cookiesaver.devsecrets --out $(DEV)

# The development server's settings: conf/main.json with the listener, certificate,
# store and secrets overridden (the dev site is "shop", as in the docs' examples).
RUN_ENV = COOKIESAVER_PUBLIC_IP=127.0.0.1 COOKIESAVER_PUBLIC_PORT=8443 \
	COOKIESAVER_PUBLIC_HOSTNAME=pxl.localhost \
	COOKIESAVER_SSL_CRT_PATH=$(DEV)/fullchain.pem COOKIESAVER_SSL_KEY_PATH=$(DEV)/privkey.pem \
	COOKIESAVER_MONGO_URI=embedded COOKIESAVER_DATA_DIR=var \
	COOKIESAVER_COOKIE_SECRET_PATH=$(DEV)/cookie-secret \
	COOKIESAVER_TOKEN_KEYS='{"dev": "$(DEV)/token-dev.key"}' COOKIESAVER_TOKEN_CURRENT_KEY=dev \
	COOKIESAVER_SITES="$$(cat $(DEV)/sites.json)"

run: devsecrets
	$(RUN_ENV) $(BIN)/twistd --pidfile= -n cookiesaver --config conf/main.json

# Validate the development configuration (certificates, keys) without serving.
check: devsecrets
	$(RUN_ENV) $(BIN)/twistd --pidfile= -n cookiesaver --config conf/main.json --check

# System packages the end-to-end suites need (nginx, chromium, wrk). Installs them when
# it can (root, apt); otherwise says loudly what will be skipped.
system-deps:
	@$(BIN)/python .ci/system_deps.py

test: venv system-deps lint
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest -p no:cacheprovider -m 'not e2e' $(PYTEST_ARGS)

bench: venv system-deps devsecrets
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Part of `make test`: the package is ruff- and mypy-clean (tests/ is not type-checked).
lint: venv
	$(BIN)/ruff check cookiesaver twisted bench
	$(BIN)/mypy cookiesaver

clean:
	rm -rf $(VENV) build dist *.egg-info _trial_temp tests.*/
