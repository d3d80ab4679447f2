"""``airflow-ml features fit|transform|show|transformers``: outputs, exit codes, messages, no partial files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from airflow_ml_provider.cli import main
from airflow_ml_provider.ml.features import FeatureSpec, FittedSpec, fit

REPO = Path(__file__).resolve().parent.parent

SPEC = textwrap.dedent(
    """
    version: 1
    label: clicked
    item_features:
      - name: duration
        transforms: [fill_missing: {strategy: median}, clip: {min: 0, max: 3600}, log1p, standardize]
      - name: genre
        dtype: categorical
        transforms: [one_hot: {top_k: 3}]
    user_features:
      - name: tags
        dtype: list
        transforms: [multi_hot]
    cross_features:
      - name: genre_x_country
        inputs: [genre, country]
        transforms: [hashed_cross: {buckets: 100}]
    """
)


@pytest.fixture
def data() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 200
    duration = rng.exponential(300, n)
    duration[::17] = np.nan
    return pd.DataFrame(
        {
            "duration": duration,
            "genre": rng.choice(["rock", "pop", "jazz", "schlager", "民谣"], n),
            "country": rng.choice(["DE", "US", "CN"], n),
            "tags": rng.choice(["a|b", "b", "", "c|a"], n),
            "clicked": rng.integers(0, 2, n),
        }
    )


@pytest.fixture
def files(tmp_path, data):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    pq_path = tmp_path / "train.parquet"
    data.to_parquet(pq_path, index=False)
    csv_path = tmp_path / "train.csv"
    data.to_csv(csv_path, index=False)
    return spec, pq_path, csv_path


def run(*argv: str) -> int:
    return main(list(argv))


def test_fit_then_transform_parquet_and_csv(tmp_path, files, data, capsys):
    spec, pq_path, csv_path = files
    fitted_path = tmp_path / "out" / "fitted.json"
    assert run("features", "fit", "--spec", str(spec), "--data", str(pq_path), "--out", str(fitted_path)) == 0
    assert "fitted 4 features on 200 rows" in capsys.readouterr().out
    fitted = FittedSpec.load(fitted_path)
    expected = fit(FeatureSpec.from_yaml(spec), data)
    assert fitted.content_hash == expected.content_hash

    for src, name in [(pq_path, "a.parquet"), (csv_path, "b.parquet")]:
        out = tmp_path / name
        assert (
            run("features", "transform", "--fitted", str(fitted_path), "--data", str(src), "--out", str(out))
            == 0
        )
        table = pq.read_table(out)
        assert table.column_names == fitted.feature_names + ["clicked"]
        assert table.schema.metadata[b"airflow_ml.fitted_spec_hash"] == fitted.content_hash.encode()
        matrix = np.column_stack([table.column(c).to_numpy() for c in fitted.feature_names])
        assert matrix.dtype == np.float32
        np.testing.assert_array_equal(matrix.view(np.uint32), expected.transform(data).view(np.uint32))
        np.testing.assert_array_equal(table.column("clicked").to_numpy(), data["clicked"].to_numpy())
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_show_and_transformers(tmp_path, files, capsys):
    spec, pq_path, _ = files
    fitted_path = tmp_path / "fitted.json"
    run("features", "fit", "--spec", str(spec), "--data", str(pq_path), "--out", str(fitted_path))
    capsys.readouterr()
    assert run("features", "show", "--fitted", str(fitted_path)) == 0
    out = capsys.readouterr().out
    assert "[item] duration (numeric): fill_missing@1 -> clip@1 -> log1p@1 -> standardize@1" in out
    assert "label: clicked" in out
    assert run("features", "transformers") == 0
    out = capsys.readouterr().out
    for name in ("bucketize", "hash_bucket", "hashed_cross", "multi_hot", "one_hot", "vocabulary"):
        assert f"\n{name}" in "\n" + out


def test_spec_error_exit_code_message_and_no_output(tmp_path, files, capsys):
    _, pq_path, _ = files
    bad = tmp_path / "bad.yaml"
    bad.write_text("item_features:\n  - name: duration\n    transforms:\n      - clip: {min: lo}\n")
    out = tmp_path / "fitted.json"
    assert run("features", "fit", "--spec", str(bad), "--data", str(pq_path), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("airflow-ml: error: ")
    assert f"{bad}, line 4: feature 'duration': field 'transforms[0].clip.min'" in err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".fitted.json*"))


def test_missing_column_and_bad_files(tmp_path, files, data, capsys):
    spec, pq_path, _ = files
    fitted_path = tmp_path / "fitted.json"
    run("features", "fit", "--spec", str(spec), "--data", str(pq_path), "--out", str(fitted_path))
    capsys.readouterr()

    no_genre = tmp_path / "no_genre.csv"
    data.drop(columns=["genre"]).to_csv(no_genre, index=False)
    out = tmp_path / "x.parquet"
    assert (
        run("features", "transform", "--fitted", str(fitted_path), "--data", str(no_genre), "--out", str(out))
        == 1
    )
    err = capsys.readouterr().err
    assert "input column 'genre' (feature 'genre') is missing" in err and str(no_genre) in err
    assert not out.exists()

    assert (
        run(
            "features",
            "fit",
            "--spec",
            str(spec),
            "--data",
            str(no_genre),
            "--out",
            str(tmp_path / "f2.json"),
        )
        == 1
    )
    assert "input column 'genre'" in capsys.readouterr().err
    assert not (tmp_path / "f2.json").exists()

    text = tmp_path / "data.txt"
    text.write_text("a,b\n1,2\n")
    assert (
        run("features", "transform", "--fitted", str(fitted_path), "--data", str(text), "--out", str(out))
        == 1
    )
    assert "cannot tell the format" in capsys.readouterr().err

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    assert (
        run("features", "transform", "--fitted", str(fitted_path), "--data", str(broken), "--out", str(out))
        == 1
    )
    assert f"cannot read {broken}" in capsys.readouterr().err

    assert (
        run(
            "features",
            "transform",
            "--fitted",
            str(tmp_path / "nope.json"),
            "--data",
            str(pq_path),
            "--out",
            str(out),
        )
        == 1
    )
    assert "fitted spec file not found" in capsys.readouterr().err
    assert not out.exists()


def test_wrong_type_in_data(tmp_path, files, data, capsys):
    spec, pq_path, _ = files
    fitted_path = tmp_path / "fitted.json"
    run("features", "fit", "--spec", str(spec), "--data", str(pq_path), "--out", str(fitted_path))
    capsys.readouterr()
    bad = data.copy()
    bad["duration"] = bad["duration"].astype(object)
    bad.loc[5, "duration"] = "twelve"
    bad_csv = tmp_path / "bad.csv"
    bad.to_csv(bad_csv, index=False)
    out = tmp_path / "o.parquet"
    assert (
        run("features", "transform", "--fitted", str(fitted_path), "--data", str(bad_csv), "--out", str(out))
        == 1
    )
    assert "feature 'duration': expected a number, got the text 'twelve'" in capsys.readouterr().err
    assert not out.exists()


def test_version_refusal_through_the_cli(tmp_path, files, capsys):
    _, pq_path, _ = files
    fitted_path = tmp_path / "fitted.json"
    doc_spec = tmp_path / "s.yaml"
    doc_spec.write_text("features:\n  - name: duration\n    transforms: [standardize]\n")
    run("features", "fit", "--spec", str(doc_spec), "--data", str(pq_path), "--out", str(fitted_path))
    doc = json.loads(fitted_path.read_text())
    doc["state"][0]["transforms"][0]["version"] = 2
    from airflow_ml_provider.ml.features.fitted import _content_hash

    doc["content_hash"] = _content_hash(doc)
    fitted_path.write_text(json.dumps(doc))
    capsys.readouterr()
    out = tmp_path / "o.parquet"
    assert (
        run("features", "transform", "--fitted", str(fitted_path), "--data", str(pq_path), "--out", str(out))
        == 1
    )
    err = capsys.readouterr().err
    assert (
        "feature 'duration'" in err
        and "'standardize' version 2 was used to fit" in err
        and "version 1 is installed" in err
    )
    assert not out.exists()


def test_console_script_exit_code_without_traceback(tmp_path, files):
    spec, _, _ = files
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_ml_provider.cli",
            "features",
            "fit",
            "--spec",
            str(spec),
            "--data",
            str(tmp_path / "missing.parquet"),
            "--out",
            str(tmp_path / "f.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"airflow-ml: error: data file not found: {tmp_path / 'missing.parquet'}"
    assert not (tmp_path / "f.json").exists()


def test_storage_uris_for_every_path(tmp_path, files, data, capsys):
    spec, pq_path, csv_path = files
    fitted_uri = f"file://{tmp_path}/models/fitted.json"
    assert (
        run(
            "features", "fit", "--spec", f"file://{spec}", "--data", f"file://{csv_path}", "--out", fitted_uri
        )
        == 0
    )
    fitted = FittedSpec.load(tmp_path / "models" / "fitted.json")
    assert fitted.content_hash == fit(FeatureSpec.from_yaml(spec), pd.read_csv(csv_path)).content_hash
    out_uri = f"file://{tmp_path}/out/features.parquet"
    assert (
        run("features", "transform", "--fitted", fitted_uri, "--data", f"file://{pq_path}", "--out", out_uri)
        == 0
    )
    table = pq.read_table(tmp_path / "out" / "features.parquet")
    matrix = np.column_stack([table.column(c).to_numpy() for c in fitted.feature_names])
    np.testing.assert_array_equal(matrix.view(np.uint32), fitted.transform(data).view(np.uint32))
    capsys.readouterr()
    missing = f"file://{tmp_path}/nope.parquet"
    assert (
        run("features", "transform", "--fitted", fitted_uri, "--data", missing, "--out", out_uri + "2") == 1
    )
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out" / "features.parquet2").exists()
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("features:\n  - name: duration\n    transforms: [nope]\n")
    assert (
        run(
            "features",
            "fit",
            "--spec",
            f"file://{bad_spec}",
            "--data",
            str(pq_path),
            "--out",
            str(tmp_path / "x.json"),
        )
        == 1
    )
    assert f"file://{bad_spec}, line 3: feature 'duration'" in capsys.readouterr().err
