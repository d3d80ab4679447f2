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
	libjsr311-api-java wrk
export AIRFLOW_ML_REPO := $(CURDIR)

.PHONY: all install system-deps demo test bench lint clean hdfs-jars

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

test: install
	@bash scripts/ensure_mariadb.sh || echo "warning: no MariaDB on 127.0.0.1:3306; its tests will skip (fail with CI=true)"
	bash scripts/run_tests.sh

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check airflow_ml_provider dags tests bench scripts

clean:
	rm -rf $(VENV) .demo .hdfs build *.egg-info
