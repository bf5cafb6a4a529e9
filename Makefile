# Two commands on a machine with Postgres and Redis: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DJANGO_DEBUG ?= 1
PORT ?= 8000
FLOWER_PORT ?= 5555

.PHONY: run test quick bench soak migrate demo lint compose-check clean-venv

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

migrate: $(STAMP)
	$(BIN)/python scripts/ensure_db.py
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py setup_demo

run: demo
	$(BIN)/python manage.py collectstatic --noinput -v 0
	@echo "Web:    http://127.0.0.1:$(PORT)/admin/  (API under /api/v1/, docs at /api/docs/)"
	@echo "Flower: http://127.0.0.1:$(FLOWER_PORT)/  (user/password from FLOWER_BASIC_AUTH, default admin:admin)"
	@mkdir -p .run
	PATH="$(abspath $(BIN)):$$PATH" PORT=$(PORT) FLOWER_PORT=$(FLOWER_PORT) \
		FLOWER_BASIC_AUTH="$${FLOWER_BASIC_AUTH:-admin:admin}" $(BIN)/honcho start -f Procfile

test: $(STAMP)
	$(BIN)/python -m pytest

quick: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Not in CI: a 10,000-item batch while workers are SIGKILLed (SOAK_ARGS="--items 2000" for less).
soak: $(STAMP)
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

compose-check:
	docker-compose -f docker-compose.yaml config -q
