"""Test configuration: shared fixtures live in tests/fixtures/ and load as plugins here."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

pytest_plugins = [
    "tests.fixtures.mariadb",
    "tests.fixtures.airflow",
    "tests.fixtures.hdfs",
]
