# Airflow 3.3 with this provider installed from the repository (used by docker-compose.yaml).
FROM apache/airflow:3.3.2-python3.11
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends default-libmysqlclient-dev libkrb5-dev pkg-config build-essential \
 && rm -rf /var/lib/apt/lists/*
USER airflow
COPY --chown=airflow:root pyproject.toml README.md /opt/airflow-ml-provider/
COPY --chown=airflow:root airflow_ml_provider /opt/airflow-ml-provider/airflow_ml_provider
RUN pip install --no-cache-dir "apache-airflow==3.3.2" apache-airflow-providers-celery /opt/airflow-ml-provider
