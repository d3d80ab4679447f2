# airflow-ml-provider: one Makefile for set-up, demo, tests and benchmarks.
# `make demo` and `make test` work on a fresh Debian machine: they install what is missing.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_PACKAGES := default-libmysqlclient-dev libkrb5-dev pkg-config build-essential \
	default-jdk-headless libjersey1-core-java libjersey1-server-java libjersey1-servlet-java \
	libjsr311-api-java wrk chromium chromium-driver
export AIRFLOW_ML_REPO := $(CURDIR)

.PHONY: all install system-deps demo test services bench lint clean hdfs-jars airflow airflow-stop airflow-status

all: test

# System packages: installed with apt-get when run as root, otherwise the exact command is printed.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c "import venv, ensurepip" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	$(PYTHON) -c "import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" \
	  >/dev/null 2>&1 || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "Missing system packages. Run:"; \
	    echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	$(MAKE) hdfs-jars
	touch $(STAMP)

install: system-deps $(STAMP)

# Hadoop 2.7.3 jars for the real HDFS used by the tests (taken from PyPI's pyspark 2.4.8 sdist).
hdfs-jars: system-deps
	@$(PY) scripts/hdfs.py fetch-jars

demo: install
	$(PY) scripts/demo.py

# The services the tests use: MariaDB (registry, dictionary), PostgreSQL (Airflow metadata of the
# live Celery test), Redis (its broker). Each is started -- and installed with apt on a fresh root
# machine -- only when it does not answer; what was started here is stopped after the tests, by PID.
services:
	@bash scripts/ensure_mariadb.sh || echo "warning: no MariaDB on 127.0.0.1:3306; its tests will skip (fail with CI=true)"
	@bash scripts/ensure_postgres.sh || echo "warning: no PostgreSQL on 127.0.0.1:5432; its tests will skip (fail with CI=true)"
	@bash scripts/ensure_redis.sh || echo "warning: no Redis on 127.0.0.1:6379; its tests will skip (fail with CI=true)"

test: install services
	@bash scripts/run_tests.sh; rc=$$?; bash scripts/stop_services.sh; exit $$rc

# A live local Airflow (api-server :8080, scheduler, dag-processor, triggerer, LocalExecutor) with this
# provider, dags/, the demo data and the model service on :8501, all under .airflow/ (see docs/deployment.md).
AIRFLOW_LOCAL_ARGS ?=
airflow: install
	$(PY) scripts/airflow_local.py start $(AIRFLOW_LOCAL_ARGS)

airflow-stop:
	@if [ -x $(PY) ]; then $(PY) scripts/airflow_local.py stop; else echo "no venv: nothing was started"; fi

airflow-status:
	@$(PY) scripts/airflow_local.py status

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check airflow_ml_provider dags tests bench scripts

clean:
	@if [ -x $(PY) ] && [ -f .airflow/stack.json ]; then $(PY) scripts/airflow_local.py stop; fi
	rm -rf $(VENV) .demo .hdfs .airflow .services build *.egg-info
