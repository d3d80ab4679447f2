"""Multi-row requests on the service's fast path: the JSON parser and the columnar transform.

* ``_loads`` (orjson when installed, ``json`` for anything orjson refuses or may read differently)
  must give the values, types and float bits ``json.loads`` gives, and the same errors;
* a 100-row request must answer the bits that 100 one-row requests answer, and a bad row in it
  must still get a 400 naming the instance and the feature.
"""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_ml_provider.ml.registry import ModelRegistry
from airflow_ml_provider.serving import ModelManager, create_app
from airflow_ml_provider.serving import app as app_module
from tests.test_serving_support import MODEL, build_model, call, predict_body, publish, row_dicts

pytestmark = pytest.mark.timeout(180)


def _json_loads(body: bytes):
    return json.loads(body, parse_constant=app_module._reject_constant)


def _same(a, b) -> bool:
    """Equal values of equal types; floats compared by their bits (so -0.0 != 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _outcome(fn, body):
    try:
        return fn(body)
    except (ValueError, RecursionError) as exc:
        return (type(exc).__name__, str(exc))


# --------------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------------

digits = st.text(alphabet="0123456789", min_size=1, max_size=24)


@st.composite
def number_text(draw) -> str:
    """JSON number text, including long mantissas, extreme exponents and halfway cases."""
    kind = draw(st.sampled_from(["random", "repr", "g17", "halfway", "int"]))
    if kind == "repr":
        return repr(draw(st.floats(allow_nan=False, allow_infinity=False)))
    if kind == "g17":
        return "%.17g" % draw(st.floats(allow_nan=False, allow_infinity=False))
    if kind == "halfway":  # the exact midpoint of two neighbouring doubles, cut to 16-20 digits
        from decimal import Decimal

        x = draw(st.floats(min_value=1e-300, max_value=1e300))
        mid = (Decimal(x) + Decimal(float(np.nextafter(x, np.inf)))) / 2
        return f"{mid:.{draw(st.integers(15, 19))}e}"
    if kind == "int":
        return str(draw(st.integers(-(2**80), 2**80)))
    sign = draw(st.sampled_from(["", "-"]))
    whole = draw(digits).lstrip("0") or "0"
    frac = draw(st.one_of(st.just(""), digits.map(lambda d: "." + d)))
    exp = draw(st.one_of(st.just(""), st.integers(-400, 400).map(lambda e: f"e{e}"),
                         st.integers(0, 30).map(lambda e: f"E+{e}")))
    return sign + whole + frac + exp


json_values = st.recursive(
    st.one_of(st.sampled_from(["null", "true", "false"]), number_text(), st.text(max_size=8).map(json.dumps),
              st.sampled_from(['"\\ud800"', '"\\u00e9\\ud83c\\udfb5"', "NaN", "-Infinity", '"\\u0000"'])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(st.sampled_from(["a", "b", "é", "a"]), inner), max_size=4).map(
            lambda kv: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kv) + "}"),
    ),
    max_leaves=12,
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=json_values, mutation=st.sampled_from(["", "cut", "garbage", "utf16", "bom"]))
def test_parser_agrees_with_json_bit_for_bit(text, mutation):
    body = text.encode("utf-8", "surrogatepass")
    if mutation == "cut":
        body = body[: len(body) // 2]
    elif mutation == "garbage":
        body += b" x"
    elif mutation == "utf16":
        body = text.encode("utf-16-le", "surrogatepass")
    elif mutation == "bom":
        body = b"\xef\xbb\xbf" + body
    expected = _outcome(_json_loads, body)
    got = _outcome(app_module._loads, body)
    assert _same(got, expected), (body[:200], got, expected)


def test_parser_cases():
    if app_module._orjson is None:
        pytest.skip("orjson is not installed: _loads is json.loads")
    cases = [
        b'{"id": 123456789012345678901234567890}',  # beyond 64 bits: json keeps the exact int
        b'{"id": -9223372036854775809, "x": 18446744073709551615}',
        b'{"x": 1e400}',  # json: inf (the transform then refuses it); orjson refuses -> json
        b'{"x": 9007199254740993.0, "y": 2.4703282292062328e-324, "z": -0.0}',
        b'{"a": 1, "a": 2}',
        b'{"a": NaN}',
        b'["\\ud800"]',
        b"[" * 5000 + b"]" * 5000,
    ]
    for body in cases:
        assert _same(_outcome(app_module._loads, body), _outcome(_json_loads, body)), body[:80]
    assert app_module._loads(cases[0])["id"] == 123456789012345678901234567890


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80) | st.text(alphabet="0123456789.,e ", max_size=80).map(str.encode)
       | st.lists(st.integers(0, 20), min_size=700, max_size=900).map(  # > 8 KB: the vectorised scan
           lambda runs: b",".join(b"7" * k for k in runs)))
def test_long_digit_run_detection(body):
    assert app_module._has_long_digit_run(body) == bool(re.search(rb"[0-9]{19}", body))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32) | st.lists(st.floats(width=32), min_size=2, max_size=3), max_size=20))
def test_prediction_responses_read_back_the_same(predictions):
    """orjson's response text reads back to json's values bit for bit (NaN and infinity as null)."""
    fast = app_module._dumps_predictions(predictions, 7)
    saved = app_module._orjson
    app_module._orjson = None
    try:
        slow = app_module._dumps_predictions(predictions, 7)
    finally:
        app_module._orjson = saved
    assert _same(json.loads(fast), json.loads(slow))


# --------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("serving-batch"), seed=4, rounds=15)


@pytest.fixture
def served(model, tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    reg.create_tables()
    publish(reg, model.bundle_dir, tmp_path / "store")
    manager = ModelManager(reg, [MODEL], poll_seconds=60, cache_dir=tmp_path / "cache")
    app = create_app(None, [MODEL], manager=manager, manage_lifecycle=False)
    assert manager.poll_once() == {MODEL: 1}
    yield app, row_dicts(model.valid_frame)
    manager.close()


def _f32_bits(values) -> list[int]:
    return [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in values]


URL = f"/v1/models/{MODEL}:predict"


@pytest.mark.parametrize("orjson", [True, False], ids=["orjson", "json"])
def test_batch_predictions_equal_single_row_and_offline(served, model, monkeypatch, orjson):
    app, rows = served
    if not orjson:
        monkeypatch.setattr(app_module, "_orjson", None)
    assert len(rows) >= 300
    batch = []
    for i in range(0, 300, 100):
        status, _, body = call(app, "POST", URL, predict_body(rows[i:i + 100]))
        assert status == 200, body
        batch.extend(body["predictions"])
    singles = []
    for row in rows[:300:7]:
        status, _, body = call(app, "POST", URL, predict_body([row]))
        assert status == 200, body
        singles.extend(body["predictions"])
    assert _f32_bits(batch[::7]) == _f32_bits(singles)
    assert _f32_bits(batch) == _f32_bits(model.offline[:300])
    # the columnar TF-Serving form, 100 rows
    cols = {k: [r[k] for r in rows[:100]] for k in rows[0]}
    status, _, body = call(app, "POST", URL, json.dumps({"inputs": cols}).encode())
    assert status == 200 and _f32_bits(body["predictions"]) == _f32_bits(model.offline[:100])


def test_bad_row_in_a_big_batch_is_a_400_naming_instance_and_feature(served):
    app, rows = served
    good = rows[:100]

    def err(index, row):
        batch = list(good)
        batch[index] = row
        status, _, body = call(app, "POST", URL, predict_body(batch))
        assert status == 400, (status, body)
        return body["error"]

    msg = err(57, {k: v for k, v in good[57].items() if k != "is_vip"})  # on_missing: error
    assert "instance 57" in msg and "is_vip" in msg
    msg = err(42, {**good[42], "plays_7d": "lots"})
    assert "instance 42" in msg and "plays_7d" in msg and "lots" in msg
    msg = err(99, {**good[99], "city": {"nested": 1}})
    assert "instance 99" in msg and "city" in msg
    msg = err(3, {**good[3], "hour": 10**400})
    assert "instance 3" in msg and "hour" in msg
    msg = err(0, {**good[0], "hour": 1e39})  # beyond float32 after the transform
    assert "instance 0" in msg and "hour" in msg and "infinite" in msg
    # the service is fine afterwards, and the same rows are served when valid
    status, _, body = call(app, "POST", URL, predict_body(good))
    assert status == 200 and len(body["predictions"]) == 100


def test_huge_integer_id_keeps_every_digit(served, monkeypatch):
    """A categorical value beyond 64 bits is keyed by all its digits, with or without orjson."""
    app, rows = served
    batch = [dict(r, city=123456789012345678901234567890 + i) for i, r in enumerate(rows[:100])]
    body = predict_body(batch)
    with_orjson = call(app, "POST", URL, body)
    monkeypatch.setattr(app_module, "_orjson", None)
    without = call(app, "POST", URL, body)
    assert with_orjson[0] == without[0] == 200
    assert _f32_bits(with_orjson[2]["predictions"]) == _f32_bits(without[2]["predictions"])
