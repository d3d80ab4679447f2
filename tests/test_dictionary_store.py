"""The dictionary table core (airflow_ml_provider.dictionary_store) on SQLite and the real MariaDB."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_ml_provider import dictionary_store as ds
from airflow_ml_provider.dictionary_store import (
    KEEP,
    DictionaryError,
    DictionaryStore,
    DictionaryUnavailableError,
    DictionaryValidationError,
)


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/dictionary.db"
    return request.getfixturevalue("mariadb_url")


@pytest.fixture
def store(db_url):
    s = DictionaryStore(db_url)
    s.create_tables()
    yield s
    s.dispose()


def test_crud_and_history(store):
    assert (
        store.set("min_auc", "0.75", description="gate for the CTR model", updated_by="alice").action
        == "created"
    )
    assert store.set("min_auc", "0.80", updated_by="bob").action == "updated"
    assert store.set("min_auc", "0.80", updated_by="bob").action == "unchanged"
    entry = store.get("min_auc")
    assert (entry.key, entry.value, entry.description, entry.updated_by) == (
        "min_auc",
        "0.80",
        "gate for the CTR model",  # kept: set() without a description keeps the stored one
        "bob",
    )
    assert entry.updated_at is not None and entry.updated_at.tzinfo is not None
    store.set("min_auc", "0.80", description="new text", updated_by="carol")
    assert store.get("min_auc").description == "new text"
    deleted = store.delete("min_auc", updated_by="dave")
    assert deleted.value == "0.80"
    assert store.get("min_auc") is None
    assert store.delete("min_auc") is None  # nothing to delete: no history row either

    hist = store.history("min_auc")
    assert [(h.action, h.old_value, h.new_value, h.changed_by) for h in hist] == [
        ("delete", "0.80", None, "dave"),
        ("update", "0.80", "0.80", "carol"),
        ("update", "0.75", "0.80", "bob"),
        ("create", None, "0.75", "alice"),
    ]
    assert hist[1].old_description == "gate for the CTR model" and hist[1].new_description == "new text"
    assert hist[0].changed_at >= hist[-1].changed_at
    assert len(store.history(limit=2)) == 2


def test_keys_are_case_sensitive_and_exact(store):
    store.set("Model", "upper")
    store.set("model", "lower")
    assert store.get("Model").value == "upper"
    assert store.get("model").value == "lower"
    assert store.load() == {"Model": "upper", "model": "lower"}
    assert store.get("MODEL") is None


def test_values_are_bound_parameters(store, db_url):
    nasty = "x'); DROP TABLE ml_dictionary; -- \\ \" ` %s %(a)s ?"
    store.set("nasty", nasty, description=nasty)
    store.set("unicode", "数据字典 — ünïcødé 🚀")
    assert store.get("nasty").value == nasty
    assert store.get("nasty").description == nasty
    assert store.get("unicode").value == "数据字典 — ünïcødé 🚀"
    # the table is still there and whole
    assert set(store.load()) == {"nasty", "unicode"}
    # LIKE wildcards in a prefix match literally
    store.set("a%b", "1")
    store.set("axb", "2")
    store.set("a_c", "3")
    store.set("abc", "4")
    assert store.load("a%") == {"a%b": "1"}
    assert store.load("a_") == {"a_c": "3"}


def test_key_column_is_quoted_for_mysql(store):
    from sqlalchemy.dialects import mysql
    from sqlalchemy.schema import CreateTable

    ddl = str(CreateTable(store.table).compile(dialect=mysql.dialect()))
    assert "`key` VARCHAR(250)" in ddl
    select = str(sa.select(store.table.c.key).compile(dialect=mysql.dialect()))
    assert "`key`" in select


@pytest.mark.parametrize(
    "key, problem",
    [
        ("", "must not be empty"),
        ("k" * 251, "the limit is 250"),
        ("a\nb", "control character"),
        (" padded", "whitespace"),
        ("padded ", "whitespace"),
        (42, "must be a string"),
    ],
)
def test_key_validation(store, key, problem):
    with pytest.raises(DictionaryValidationError, match=problem):
        store.set(key, "v")
    assert store.load() == {}


def test_key_of_exactly_250_characters(store):
    key = "k" * 250
    store.set(key, "v")
    assert store.get(key).value == "v"


def test_value_size_limit(store):
    at_limit = "é" * (ds.MAX_VALUE_BYTES // 2) + "a"  # é is 2 bytes in UTF-8: exactly 65,535 bytes
    assert len(at_limit.encode()) == ds.MAX_VALUE_BYTES
    store.set("big", at_limit)
    assert store.get("big").value == at_limit
    with pytest.raises(DictionaryValidationError, match=r"too large: 65536 bytes, the limit is 65535"):
        store.set("big", at_limit + "b")
    with pytest.raises(DictionaryValidationError, match="must be a string"):
        store.set("num", 3)
    with pytest.raises(DictionaryValidationError, match="description .* too long"):
        store.set("d", "v", description="x" * (ds.MAX_DESCRIPTION_CHARS + 1))
    assert store.get("big").value == at_limit  # the failed set changed nothing


@pytest.mark.parametrize(
    "name", ["ml_dictionary; DROP TABLE x", "bad-name", "1abc", "a b", "`key`", "", "t" * 49, None]
)
def test_table_name_must_be_plain_identifier(name):
    with pytest.raises(DictionaryValidationError, match="invalid dictionary table name|longer than"):
        DictionaryStore("sqlite://", name)


def test_custom_table_name(db_url):
    s = DictionaryStore(db_url, "team_settings")
    s.create_tables()
    s.set("x", "1")
    insp = sa.inspect(s.engine)
    assert {"team_settings", "team_settings_history"} <= set(insp.get_table_names())
    assert "ml_dictionary" not in insp.get_table_names()
    s.dispose()


def test_create_tables_is_idempotent(store):
    store.set("k", "v")
    store.create_tables()
    store.create_tables()
    assert store.load() == {"k": "v"}


def test_load_is_one_query(store):
    for i in range(50):
        store.set(f"p.k{i}", str(i))
    store.set("other", "x")
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", count)
    try:
        everything = store.load()
        under = store.load("p.")
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", count)
    assert len(everything) == 51 and len(under) == 50 and "other" not in under
    assert len([s for s in statements if "ml_dictionary" in s]) == 2  # one per load


def test_load_on_missing_table_creates_it(db_url):
    s = DictionaryStore(db_url)
    with pytest.raises(DictionaryError, match="dictionary table 'ml_dictionary' not found"):
        s.get("x")
    assert s.load(create_missing=True) == {}
    s.set("x", "1")
    assert s.load() == {"x": "1"}
    s.dispose()


def test_import_is_one_transaction(store):
    store.set("keep", "old", description="kept description")
    result = store.import_entries(
        [("keep", "new", KEEP), ("fresh", "1", "a description"), ("same", "s", KEEP)], updated_by="ci"
    )
    assert (result.created, result.updated, result.unchanged) == (["fresh", "same"], ["keep"], [])
    assert store.get("keep").description == "kept description"
    assert store.get("fresh").description == "a description"
    before = store.load()
    history_before = len(store.history())
    with pytest.raises(DictionaryValidationError, match=r"file.json: invalid dictionary key ''"):
        store.import_entries([("keep", "changed", KEEP), ("", "bad", KEEP)], source="file.json")
    assert store.load() == before  # nothing of the bad import was written
    assert len(store.history()) == history_before


def test_export_then_import_reads_back_unchanged(store, db_url, tmp_path):
    store.set("min_auc", "0.75", description="gate")
    store.set("cfg", json.dumps({"threshold": 0.5, "features": ["a", "b"]}))
    store.set("multi", 'line 1\nline 2\ttab \\ backslash "quote"')
    store.set("empty", "")
    store.set("unicode", "数据 ü")
    text = ds.dump_export(store.export_entries())
    # into a fresh database
    other = DictionaryStore(f"sqlite:///{tmp_path}/other.db")
    other.create_tables()
    result = other.import_entries(ds.parse_json_entries(text, source="export.json"))
    assert len(result.created) == 5
    assert ds.dump_export(other.export_entries()) == text
    assert [(e.key, e.value, e.description) for e in other.list()] == [
        (e.key, e.value, e.description) for e in store.list()
    ]
    # back into the same database: nothing changes, no history
    n = len(store.history())
    again = store.import_entries(ds.parse_json_entries(text))
    assert again.created == [] and again.updated == [] and len(again.unchanged) == 5
    assert len(store.history()) == n


def test_parse_json_flat_mapping_like_airflow_variables_export():
    entries = ds.parse_json_entries(
        json.dumps({"a": "text", "n": 3, "f": 0.5, "b": True, "obj": {"x": [1, 2]}, "none": None})
    )
    assert {k: v for k, v, _ in entries} == {
        "a": "text",
        "n": "3",
        "f": "0.5",
        "b": "true",
        "obj": '{"x": [1, 2]}',
        "none": "null",
    }
    assert all(d is KEEP for _, _, d in entries)


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"a": 1,', r"invalid JSON at line 1, column 9"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "airflow-ml-dictionary", "version": 9, "entries": []}', "unsupported export version 9"),
        (
            '{"format": "airflow-ml-dictionary", "version": 1, "entries": [{"key": "a"}]}',
            r"entries\[0\]: missing field 'value'",
        ),
        (
            '{"format": "airflow-ml-dictionary", "version": 1, "entries": [{"key": "a", "value": 1}]}',
            r"key 'a'\): 'value' must be a string",
        ),
        (
            '{"format": "airflow-ml-dictionary", "version": 1, "entries": [{"key": "a", "value": "1", "x": 1}]}',
            "unknown field",
        ),
    ],
)
def test_parse_json_errors_name_the_problem(text, problem):
    with pytest.raises(DictionaryValidationError, match=problem) as info:
        ds.parse_json_entries(text, source="in.json")
    assert str(info.value).startswith("in.json")


def test_unreachable_database_error_masks_password():
    # nothing listens on port 1: refused at once
    s = DictionaryStore("mysql+pymysql://ml_user:Sup3rSecretPw@127.0.0.1:1/ml", connect_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(DictionaryUnavailableError) as info:
        s.load()
    assert time.monotonic() - t0 < 3
    message = str(info.value)
    assert "Sup3rSecretPw" not in message
    assert "mysql+pymysql://ml_user:***@127.0.0.1:1/ml" in message
    assert info.value.database == "mysql+pymysql://ml_user:***@127.0.0.1:1/ml"


def test_connect_timeout_is_capped_at_5_seconds():
    with pytest.raises(DictionaryValidationError, match="connect_timeout must be > 0 and <= 5"):
        DictionaryStore("sqlite://", connect_timeout=30)
    with pytest.raises(DictionaryValidationError, match="invalid SQLAlchemy URL"):
        DictionaryStore("not a url")


def test_mask_url():
    assert ds.mask_url("mysql+pymysql://u:p%40ss@h:3306/db") == "mysql+pymysql://u:***@h:3306/db"
    assert ds.mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_core_never_imports_airflow():
    code = (
        "import sys, airflow_ml_provider.dictionary_store as m; "
        "m.DictionaryStore('sqlite://').create_tables(); "
        "bad = [n for n in sys.modules if n == 'airflow' or n.startswith('airflow.')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_load_snapshot_direct_driver_path(store, db_url):
    """The backend's one-query load (driver used directly) gives what the SQLAlchemy path gives."""
    for key, value in {
        "team_a.x": "1",
        "teamBa.x": "2",
        "team_a.y": "3",
        "a%b": "4",
        "a!b": "5",
        "z": "6",
    }.items():
        store.set(key, value)
    assert ds.load_snapshot(db_url) == store.load()
    assert ds.load_snapshot(db_url, prefix="team_a.") == {"team_a.x": "1", "team_a.y": "3"}  # "_" is literal
    assert ds.load_snapshot(db_url, prefix="a%") == {"a%b": "4"}
    assert ds.load_snapshot(db_url, prefix="a!") == {"a!b": "5"}
    with pytest.raises(ds.DictionaryTableMissing):
        ds.load_snapshot(db_url, table="not_created")
    with pytest.raises(DictionaryValidationError):
        ds.load_snapshot(db_url, table="x; DROP TABLE ml_dictionary")


def test_load_snapshot_unreachable_masks_password():
    with pytest.raises(DictionaryUnavailableError) as info:
        ds.load_snapshot("mysql+pymysql://u:PwSecret123@127.0.0.1:1/db", connect_timeout=1)
    assert "PwSecret123" not in str(info.value) and "u:***@127.0.0.1:1/db" in str(info.value)


def test_concurrent_writers_of_a_new_key(store):
    """Eight writers create the same key at once: all succeed, exactly one 'create' in the history."""
    import threading

    barrier = threading.Barrier(8)
    results, errors = [], []

    def writer(i):
        s = DictionaryStore(store.engine)
        barrier.wait()
        try:
            results.append(s.set("shared", f"v{i}", updated_by=f"w{i}").action)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results.count("created") == 1
    history = store.history("shared")
    assert [h.action for h in history].count("create") == 1
    assert history[0].new_value == store.get("shared").value


_key_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=250
).filter(lambda k: k == k.strip())


@settings(max_examples=40, deadline=None)
@given(
    entries=st.dictionaries(
        _key_text,
        st.tuples(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=50))),
        max_size=12,
    )
)
def test_export_import_round_trip_property(entries):
    """Any valid keys, values and descriptions survive export -> import -> export byte for byte."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = DictionaryStore(f"sqlite:///{tmp}/a.db")
        dst = DictionaryStore(f"sqlite:///{tmp}/b.db")
        src.create_tables()
        dst.create_tables()
        src.import_entries([(k, v, d) for k, (v, d) in entries.items()])
        text = ds.dump_export(src.export_entries())
        dst.import_entries(ds.parse_json_entries(text))
        assert ds.dump_export(dst.export_entries()) == text
        assert {e.key: (e.value, e.description) for e in dst.list()} == entries
        src.dispose()
        dst.dispose()
