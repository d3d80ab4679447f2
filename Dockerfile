# syntax=docker/dockerfile:1
# Airflow 3.3 with this provider, for docker-compose.yaml. Two stages:
#   build   -- compilers and -dev headers build wheels for what has no binary wheel (kerberos bindings
#              of the HDFS provider, mysqlclient if needed);
#   runtime -- the plain Airflow image plus those wheels: no compiler, no headers.
# Everything is installed under Airflow's constraints file for this Airflow/Python version, so the
# image gets the dependency versions Airflow was released and tested with; a conflict fails the build.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS build
ARG AIRFLOW_VERSION
ARG PYTHON_VERSION
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config default-libmysqlclient-dev libkrb5-dev \
 && rm -rf /var/lib/apt/lists/*
USER airflow
WORKDIR /src
COPY --chown=airflow:root pyproject.toml README.md ./
COPY --chown=airflow:root airflow_ml_provider ./airflow_ml_provider
RUN curl -fsSL -o /tmp/constraints.txt \
      "https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" \
 && pip wheel --no-cache-dir --wheel-dir /tmp/wheels --constraint /tmp/constraints.txt \
      "apache-airflow==${AIRFLOW_VERSION}" /src \
 && cp /tmp/constraints.txt /tmp/wheels/constraints.txt

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS runtime
ARG AIRFLOW_VERSION
USER root
# the directory of the simple auth manager's password file (a named volume takes this ownership)
RUN mkdir -p /opt/airflow/auth && chown airflow:root /opt/airflow/auth && chmod 0770 /opt/airflow/auth
USER airflow
# the wheels are bind-mounted from the build stage, so they never become a layer of this image
RUN --mount=type=bind,from=build,source=/tmp/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels --constraint /wheels/constraints.txt \
      "apache-airflow==${AIRFLOW_VERSION}" airflow-ml-provider
