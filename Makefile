# Two commands: `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# `make run` is the local playground: the built-in Twilio sandbox on (it is off by default, and refused
# with a real Twilio account), the web process on PORT, and every process told the same public URL
# (honcho hands each process its own PORT: 5000 web, 5100 worker). The Procfile names its commands
# plainly, as Procfile hosts expect; the venv goes first on PATH instead. Set for `run` and `migrate`
# only (and what they run): the tests build their own settings.
run migrate preflight: export SANDBOX ?= on
run migrate preflight: export PORT ?= 5000
run migrate preflight: export PUBLIC_BASE_URL ?= http://127.0.0.1:$(PORT)

.PHONY: run test install migrate preflight clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/smsgate db upgrade
	$(BIN)/smsgate programs load $${PROGRAMS_FILE:-config/programs.example.toml}

# Refuse before anything starts or is migrated when a gateway already runs on this VAR_DIR or PORT
# (the web process checks again itself: config/gunicorn.conf.py).
preflight: install
	@$(BIN)/python -m gateway.banner --check

# Web + worker (+ beat) with the embedded SQLite store, embedded broker and the Twilio sandbox.
run: preflight migrate
	@$(BIN)/python -m gateway.banner
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -f Procfile

# The linter first (a finding fails the run), then the whole suite: PostgreSQL and Redis when
# TEST_DATABASE_URL/DATABASE_URL and REDIS_URL say so.
test: install
	$(BIN)/ruff check --output-format concise .
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf var .pytest_cache .hypothesis
