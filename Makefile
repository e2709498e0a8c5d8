# Two commands: `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install migrate clean

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

# Web + worker (+ beat) with the embedded SQLite store, embedded broker and the Twilio sandbox.
run: migrate
	@$(BIN)/python -m gateway.banner
	$(BIN)/honcho start -f Procfile

# The whole suite. PostgreSQL and Redis when TEST_DATABASE_URL/DATABASE_URL and REDIS_URL say so.
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf var .pytest_cache .hypothesis
