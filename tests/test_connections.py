"""AIRFLOW_CONN_<ID> values read without Airflow, shared by storage and registry resolution."""

import pytest

from airflow_ml_provider.ml import storage
from airflow_ml_provider.ml.connections import ConnectionEnvError, parse_connection_env


def test_uri_form_with_extra_and_quoting():
    f = parse_connection_env("x", "mysql://ml%40corp:p%2Fw@db.local:3307/ml?__extra__=%7B%22a%22%3A+1%7D")
    assert f == {"conn_type": "mysql", "host": "db.local", "port": 3307, "login": "ml@corp",
                 "password": "p/w", "schema": "ml", "extra": {"a": 1}}
    assert parse_connection_env("x", "webhdfs://nn:9870?use_ssl=true")["extra"] == {"use_ssl": "true"}


def test_json_form_and_errors():
    f = parse_connection_env("x", '{"conn_type": "webhdfs", "host": "nn", "port": 9870, "extra": "{\\"use_kerberos\\": true}"}')
    assert (f["host"], f["port"], f["extra"]) == ("nn", 9870, {"use_kerberos": True})
    with pytest.raises(ConnectionEnvError, match="AIRFLOW_CONN_MY_CONN is not valid JSON"):
        parse_connection_env("my_conn", "{nope")
    with pytest.raises(ConnectionEnvError, match="neither a connection URI nor JSON"):
        parse_connection_env("x", "just-a-host")


def test_storage_uses_it_and_names_the_variable(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_HDFS_X", "webhdfs://hdfs@nn.example:50070?__extra__=%7B%22use_ssl%22%3A+true%7D")
    opts = storage.webhdfs_options_from_connection("hdfs_x")
    assert opts == {"host": "nn.example", "port": 50070, "user": "hdfs", "use_https": True}
    monkeypatch.setenv("AIRFLOW_CONN_HDFS_X", "{broken")
    with pytest.raises(storage.StorageError, match="AIRFLOW_CONN_HDFS_X is not valid JSON"):
        storage.webhdfs_options_from_connection("hdfs_x")
