"""Trainer adapters: the contract, xgboost in depth, then tensorflow, word2vec, linear and gbdt."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from airflow_ml_provider.ml.feature_table import Dataset, read_feature_table, write_feature_table
from airflow_ml_provider.ml.metrics import auc_score
from airflow_ml_provider.ml.trainers import TrainerError, get_trainer, load_predictor, read_metadata
from airflow_ml_provider.ml.trainers.xgboost import build_params

HEAVY = ("xgboost", "tensorflow", "keras", "gensim", "sklearn")


def _binary(n=2000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    logit = 1.5 * X[:, 0] - 1.0 * X[:, 1] + 0.5 * X[:, 2] * X[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    X[rng.random((n, d)) < 0.02] = np.nan  # some missing values
    names = [f"x{i}" for i in range(d)]
    return Dataset(X=X[: n * 3 // 4], y=y[: n * 3 // 4], feature_names=names), Dataset(
        X=X[n * 3 // 4 :], y=y[n * 3 // 4 :], feature_names=names
    )


def _regression(n=1500, d=4, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = (3 * X[:, 0] - 2 * X[:, 1] + rng.normal(0, 0.3, n)).astype(np.float32)
    names = [f"r{i}" for i in range(d)]
    return Dataset(X=X[:1000], y=y[:1000], feature_names=names), Dataset(
        X=X[1000:], y=y[1000:], feature_names=names
    )


def test_importing_trainers_imports_no_heavy_library():
    code = (
        "import sys, airflow_ml_provider.ml.trainers as t, airflow_ml_provider.ml.feature_table, "
        "airflow_ml_provider.ml.metrics, airflow_ml_provider.ml.gates\n"
        "t.get_trainer('xgboost')\n"
        f"print(sorted(m for m in {HEAVY!r} + ('matplotlib',) if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_unknown_trainer_lists_available():
    with pytest.raises(TrainerError, match="unknown trainer 'catboost'; available: gbdt, linear, tensorflow"):
        get_trainer("catboost")
    assert get_trainer("XGB").name == "xgboost"


# ----------------------------------------------------------------------------------------- xgboost


@pytest.fixture(scope="module")
def xgb_run(tmp_path_factory):
    """One early-stopped xgboost training shared by several assertions."""
    train, valid = _binary()
    out = tmp_path_factory.mktemp("xgb")
    lines: list[str] = []
    params = {
        "objective": "binary:logistic",
        "eta": "0.3",
        "max_depth": 3,
        "rounds": 200,
        "early_stopping_rounds": 5,
        "eval_metric": ["logloss", "auc"],
        "tree_method": "hist",
        "nthread": 1,
        "min_child_weight": 5,  # free-form param goes straight to xgboost
    }
    result = get_trainer("xgboost").train(train, valid, params, out, log=lines.append)
    return train, valid, out, lines, result


def test_xgboost_logs_every_iteration_and_records_history(xgb_run):
    _, _, _, lines, result = xgb_run
    rounds = result.extra["num_boosted_rounds"]
    progress = [ln for ln in lines if ln.startswith("[")]
    assert len(progress) == rounds
    assert progress[0].startswith("[1/200] valid-logloss=") and "valid-auc=" in progress[0]
    assert len(result.history["valid"]["auc"]) == rounds
    # The logged value is the value in the history.
    assert float(progress[2].split("valid-logloss=")[1].split()[0]) == pytest.approx(
        result.history["valid"]["logloss"][2], rel=1e-5
    )


def test_xgboost_early_stopping_uses_best_iteration(xgb_run):
    _train, valid, out, _, result = xgb_run
    rounds = result.extra["num_boosted_rounds"]
    assert rounds < 200  # stopped early
    # The best iteration is where the last metric (auc) peaked.
    auc_hist = result.history["valid"]["auc"]
    assert result.best_iteration == int(np.argmax(auc_hist))
    assert rounds == result.best_iteration + 1 + 5
    import xgboost as xgb

    booster = xgb.Booster(model_file=str(out / "model.ubj"))
    best = booster.predict(
        xgb.DMatrix(valid.X, feature_names=valid.feature_names),
        iteration_range=(0, result.best_iteration + 1),
    )
    np.testing.assert_allclose(result.predictor.predict(valid.X), best, rtol=1e-6)
    assert auc_score(valid.y, result.predictor.predict(valid.X)) == pytest.approx(max(auc_hist), abs=1e-6)


def test_xgboost_loaded_predictions_are_bit_identical(xgb_run):
    _, valid, out, _, result = xgb_run
    loaded = load_predictor("xgboost", out)
    after_training = result.predictor.predict(valid.X)
    assert after_training.dtype == np.float32
    assert np.array_equal(loaded.predict(valid.X), after_training)
    # one row at a time (the online service's shape) gives the same numbers
    assert np.array_equal(np.concatenate([loaded.predict(r) for r in valid.X[:20]]), after_training[:20])
    assert load_predictor(None, out).framework == "xgboost"
    with pytest.raises(TrainerError, match="trained with 'xgboost', not 'tensorflow'"):
        load_predictor("tensorflow", out)


def test_xgboost_metadata_and_files(xgb_run):
    train, _, out, _, result = xgb_run
    meta = read_metadata(out)
    assert sorted(p.name for p in out.iterdir()) == ["metadata.json", "model.ubj"]
    assert meta["framework"] == "xgboost" and meta["task"] == "binary"
    assert meta["best_iteration"] == result.best_iteration
    assert meta["feature_names"] == train.feature_names
    assert meta["params"]["eta"] == 0.3 and meta["params"]["min_child_weight"] == 5
    assert meta["params"]["eval_metric"] == ["logloss", "auc"]
    import xgboost as xgb

    assert meta["library_versions"]["xgboost"] == xgb.__version__
    assert meta["history"]["valid"]["auc"] == result.history["valid"]["auc"]
    json.dumps(result.to_dict())


def test_xgboost_feature_importance_uses_feature_names(xgb_run):
    _, _, out, _, _ = xgb_run
    imp = load_predictor("xgboost", out).feature_importance()
    assert set(imp) == {f"x{i}" for i in range(6)}
    assert max(imp, key=imp.get) == "x0"  # the strongest signal
    assert imp["x5"] < imp["x0"]


def test_xgboost_same_model_as_plain_xgboost_train(tmp_path):
    """Through the trainer == plain script on the same Parquet: same booster, same predictions."""
    import xgboost as xgb

    train, valid = _binary(n=1200, seed=3)
    write_feature_table(tmp_path / "train.parquet", train.X, train.y, train.feature_names)
    ds = read_feature_table(tmp_path / "train.parquet")
    params = {"objective": "binary:logistic", "max_depth": 4, "eta": 0.2, "nthread": 1, "seed": 0}
    result = get_trainer("xgboost").train(
        ds, None, {**params, "rounds": 15}, tmp_path / "m", log=lambda s: None
    )
    plain = xgb.train({**params, "tree_method": "hist"}, xgb.DMatrix(train.X, label=train.y, nthread=1), 15)
    assert np.array_equal(result.predictor.predict(valid.X), plain.inplace_predict(valid.X))


def test_xgboost_regression_json_format_and_quantile_dmatrix(tmp_path):
    train, valid = _regression()
    result = get_trainer("xgboost").train(
        train,
        valid,
        {
            "objective": "reg:squarederror",
            "rounds": "20",
            "eval_metric": "rmse",
            "model_format": "json",
            "dmatrix": "quantile",
            "log_every": 10,
        },
        tmp_path,
        log=lambda s: None,
    )
    assert result.task == "regression" and (tmp_path / "model.json").exists()
    loaded = load_predictor("xgboost", tmp_path)
    assert np.array_equal(loaded.predict(valid.X), result.predictor.predict(valid.X))
    rmse = float(np.sqrt(np.mean((loaded.predict(valid.X) - valid.y) ** 2)))
    assert rmse == pytest.approx(result.history["valid"]["rmse"][-1], rel=1e-4)
    assert rmse < 1.5


def test_xgboost_device_passes_through_and_params_parse():
    booster, opt = build_params(
        {
            "device": "cuda",
            "tree_method": "hist",
            "eval_metric": "auc,logloss",
            "learning_rate": "0.05",
            "num_boost_round": "7",
            "extra_params": '{"gamma": 1}',
        }
    )
    assert booster["device"] == "cuda"
    assert booster["eval_metric"] == ["auc", "logloss"]
    assert booster["eta"] == 0.05 and booster["gamma"] == 1
    assert opt["num_boost_round"] == 7


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_depth": "deep"}, "xgboost param 'max_depth': expected int, got 'deep'"),
        ({"rounds": 0}, "'num_boost_round' must be >= 1"),
        ({"dmatrix": "sparse"}, "'dmatrix' must be 'dmatrix' or 'quantile'"),
        ({"early_stopping_rounds": 3}, "'early_stopping_rounds' needs a validation dataset"),
        ({"extra_params": "{x"}, "'extra_params': not valid JSON"),
    ],
)
def test_xgboost_bad_params_are_named(tmp_path, params, message):
    train, _ = _binary(n=100)
    with pytest.raises(TrainerError, match=message):
        get_trainer("xgboost").train(train, None, params, tmp_path, log=lambda s: None)


def test_xgboost_refuses_bad_data(tmp_path):
    train, valid = _binary(n=100)
    with pytest.raises(TrainerError, match="training data has no label"):
        get_trainer("xgboost").train(Dataset(X=train.X), None, {}, tmp_path)
    with pytest.raises(TrainerError, match="validation data has 2 features, training data 6"):
        get_trainer("xgboost").train(train, Dataset(X=valid.X[:, :2], y=valid.y), {}, tmp_path)
    with pytest.raises(TrainerError, match="no model metadata"):
        load_predictor("xgboost", tmp_path / "nowhere")
