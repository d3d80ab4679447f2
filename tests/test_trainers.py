"""Trainer adapters: the contract, xgboost in depth, then tensorflow, word2vec, linear and gbdt."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

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
        "airflow_ml_provider.ml.metrics, airflow_ml_provider.ml.gates, airflow_ml_provider.ml.charts\n"
        "t.get_trainer('xgboost'); t.get_trainer('tensorflow'); t.get_trainer('word2vec'); "
        "t.get_trainer('linear'); t.get_trainer('gbdt')\n"
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


def test_xgboost_early_stopped_model_file_holds_exactly_the_served_trees(xgb_run):
    """Issue 13, point 4: a plain ``Booster().load_model()`` + ``predict`` of the saved file (no
    iteration_range, no metadata) gives the served scores bit for bit; the trees after the best
    iteration are not in the file."""
    import xgboost as xgb

    _, valid, out, lines, result = xgb_run
    trained = result.extra["num_boosted_rounds"]
    assert result.best_iteration < trained - 1  # the case of the issue: rounds trained past the best
    plain = xgb.Booster()
    plain.load_model(str(out / "model.ubj"))
    assert plain.num_boosted_rounds() == result.best_iteration + 1 == result.extra["saved_rounds"]
    assert len(plain.get_dump()) == result.best_iteration + 1  # binary objective: one tree per round
    served = load_predictor("xgboost", out).predict(valid.X)
    assert np.array_equal(plain.predict(xgb.DMatrix(valid.X, feature_names=valid.feature_names)), served)
    assert np.array_equal(plain.inplace_predict(valid.X), served)
    assert np.array_equal(result.predictor.predict(valid.X), served)
    assert plain.attr("best_iteration") == str(result.best_iteration)
    assert any(f"(the {result.best_iteration + 1} rounds up to the best iteration)" in ln for ln in lines)


def test_xgboost_early_stopped_multiclass_saves_best_rounds(tmp_path):
    import xgboost as xgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(900, 4)).astype(np.float32)
    y = (np.digitize(X[:, 0] + 0.8 * rng.normal(size=900), [-0.5, 0.5])).astype(np.float32)
    names = ["a", "b", "c", "d"]
    train, valid = Dataset(X=X[:600], y=y[:600], feature_names=names), Dataset(X=X[600:], y=y[600:],
                                                                              feature_names=names)
    result = get_trainer("xgboost").train(
        train, valid, {"objective": "multi:softprob", "num_class": 3, "eta": 0.8, "rounds": 300,
                       "early_stopping_rounds": 3, "nthread": 1}, tmp_path, log=lambda *_: None)
    assert result.best_iteration < result.extra["num_boosted_rounds"] - 1
    plain = xgb.Booster(model_file=str(tmp_path / "model.ubj"))
    assert len(plain.get_dump()) == 3 * (result.best_iteration + 1)  # 3 trees (one per class) a round
    assert np.array_equal(plain.inplace_predict(valid.X), load_predictor("xgboost", tmp_path).predict(valid.X))


def test_xgboost_without_early_stopping_saves_every_round(tmp_path):
    import xgboost as xgb

    train, valid = _binary(n=600)
    result = get_trainer("xgboost").train(train, valid, {"rounds": 7, "nthread": 1}, tmp_path,
                                          log=lambda *_: None)
    assert result.best_iteration == 6
    assert xgb.Booster(model_file=str(tmp_path / "model.ubj")).num_boosted_rounds() == 7


def test_xgboost_direct_predict_matches_inplace_predict_bit_for_bit(xgb_run):
    """The predictor's direct C call (issue 13, point 8) answers what Booster.inplace_predict does."""
    _, valid, out, _, _ = xgb_run
    loaded = load_predictor("xgboost", out)
    assert loaded._fast is not None  # in use with this xgboost
    X = np.ascontiguousarray(valid.X)
    # same shapes with other data in turn (the per-thread proxy DMatrix is reused), other shapes,
    # and X[::2], which is not C-contiguous (copied first)
    for part in (X[:1], X[5:6], X[:7], X[7:14], X[:7], X, X[::2], X[:1]):
        assert np.array_equal(loaded.predict(part), loaded._library_predict(np.ascontiguousarray(part)))
    with ThreadPoolExecutor(4) as pool:  # concurrent calls: a proxy per thread
        outs = list(pool.map(loaded.predict, [X[i:i + 3] for i in range(0, 60, 3)] * 5))
    assert np.array_equal(np.concatenate(outs[:20]), loaded._library_predict(np.ascontiguousarray(X[:60])))
    assert all(np.array_equal(a, b) for a, b in zip(outs, outs[20:]))


def test_xgboost_direct_predict_falls_back_when_it_disagrees(xgb_run, monkeypatch):
    from airflow_ml_provider.ml.trainers import xgboost as xgb_trainer

    _, valid, out, _, _ = xgb_run
    monkeypatch.setattr(xgb_trainer._DensePredict, "__call__", lambda self, X: np.zeros(len(X), np.float32))
    loaded = load_predictor("xgboost", out)
    assert loaded._fast is None
    assert np.array_equal(loaded.predict(valid.X), loaded._library_predict(valid.X))
    assert loaded.predict(valid.X).any()


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
            "nthread": 1,
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


# ------------------------------------------------------------------------------------------ linear


def test_linear_binary_matches_sklearn_and_reloads_bit_identical(tmp_path):
    from sklearn.linear_model import LogisticRegression

    train, valid = _binary(seed=4)
    lines: list[str] = []
    result = get_trainer("linear").train(train, valid, {"C": "0.5"}, tmp_path, log=lines.append)
    assert result.task == "binary" and (tmp_path / "model.json").exists()
    loaded = load_predictor("linear", tmp_path)
    p = loaded.predict(valid.X)
    assert np.array_equal(p, result.predictor.predict(valid.X))
    # same model as scikit-learn on the same (imputed, standardized) inputs
    fill = np.nanmean(np.where(np.isfinite(train.X), train.X, np.nan), axis=0)
    Xt = np.where(np.isfinite(train.X), train.X, fill).astype(np.float64)
    mu, sd = Xt.mean(axis=0), Xt.std(axis=0)
    ref = LogisticRegression(C=0.5, max_iter=500).fit((Xt - mu) / sd, train.y.astype(int))
    Xv = np.where(np.isfinite(valid.X), valid.X, fill).astype(np.float64)
    np.testing.assert_allclose(p, ref.predict_proba((Xv - mu) / sd)[:, 1], rtol=1e-5, atol=1e-7)
    assert auc_score(valid.y, p) > 0.75
    assert result.history["valid"]["auc"][0] == pytest.approx(auc_score(valid.y, p))
    imp = loaded.feature_importance()
    assert max(imp, key=imp.get) == "x0"
    assert any("valid-auc=" in ln for ln in lines)


def test_linear_regression_ridge_and_no_sklearn_needed_to_predict(tmp_path):
    train, valid = _regression()
    result = get_trainer("linear").train(train, valid, {"alpha": 1.0}, tmp_path, log=lambda s: None)
    assert result.task == "regression"
    pred = load_predictor("linear", tmp_path).predict(valid.X)
    assert float(np.sqrt(np.mean((pred - valid.y) ** 2))) < 0.5
    code = (
        "import sys, numpy as np; from airflow_ml_provider.ml.trainers import load_predictor; "
        f"p = load_predictor('linear', {str(tmp_path)!r}); p.predict(np.zeros((2, 4), np.float32)); "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_linear_rejects_unknown_and_bad_params(tmp_path):
    train, _ = _binary(n=100)
    with pytest.raises(TrainerError, match=r"linear: unknown param\(s\) \['eta'\]"):
        get_trainer("linear").train(train, None, {"eta": 0.1}, tmp_path)
    with pytest.raises(TrainerError, match="'penalty' must be l2, l1 or none, got 'l3'"):
        get_trainer("linear").train(train, None, {"penalty": "l3"}, tmp_path)
    with pytest.raises(TrainerError, match="task must be 'binary' or 'regression', got 'multi'"):
        get_trainer("linear").train(train, None, {"task": "multi"}, tmp_path)


# -------------------------------------------------------------------------------------------- gbdt


def test_gbdt_binary_early_stopping_history_and_reload(tmp_path):
    train, valid = _binary(n=1200, seed=5)
    lines: list[str] = []
    result = get_trainer("gbdt").train(
        train,
        valid,
        {"max_iter": 40, "early_stopping_rounds": 3, "learning_rate": 0.3, "max_leaf_nodes": 8},
        tmp_path,
        log=lines.append,
    )
    n_iter = result.extra["n_iter"]
    assert len(result.history["valid"]["logloss"]) == n_iter
    assert sum(ln.startswith("[") for ln in lines) == n_iter
    assert result.best_iteration == int(np.argmin(result.history["valid"]["logloss"]))
    loaded = load_predictor("gbdt", tmp_path)
    p = loaded.predict(valid.X)
    assert np.array_equal(p, result.predictor.predict(valid.X))
    assert ((p >= 0) & (p <= 1)).all() and auc_score(valid.y, p) > 0.75
    imp = loaded.feature_importance()
    assert max(imp, key=imp.get) == "x0" and all(v >= 0 for v in imp.values())
    meta = read_metadata(tmp_path)
    meta["library_versions"]["scikit-learn"] = "0.0.1"
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="trained with scikit-learn 0.0.1"):
        load_predictor("gbdt", tmp_path)


def test_gbdt_regression_without_validation(tmp_path):
    train, valid = _regression()
    result = get_trainer("gbdt").train(
        train, None, {"max_iter": 30, "task": "regression"}, tmp_path, log=lambda s: None
    )
    assert result.history == {} and result.best_iteration is None
    pred = load_predictor("gbdt", tmp_path).predict(valid.X)
    assert float(np.sqrt(np.mean((pred - valid.y) ** 2))) < 1.0
    with pytest.raises(TrainerError, match="'early_stopping_rounds' needs a validation dataset"):
        get_trainer("gbdt").train(train, None, {"early_stopping_rounds": 2}, tmp_path)


# ---------------------------------------------------------------------------------------- word2vec


def _sessions(n_users=300, seed=0):
    """Two taste clusters: users play items from one cluster only."""
    rng = np.random.default_rng(seed)
    rock = [f"rock{i}" for i in range(15)]
    jazz = [f"jazz{i}" for i in range(15)]
    return [list(rng.choice(rock if u % 2 else jazz, size=12)) for u in range(n_users)]


def test_word2vec_learns_clusters_and_reloads(tmp_path):
    lines: list[str] = []
    ds = Dataset.from_sentences(_sessions(), column="history")
    params = {
        "sentences_column": "history",
        "vector_size": 16,
        "epochs": 5,
        "window": 3,
        "seed": 1,
        "sample": 0,
    }
    result = get_trainer("word2vec").train(ds, None, params, tmp_path, log=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metadata.json",
        "vectors.npy",
        "vocabulary.json",
        "word2vec.bin",
    ]
    assert sum(ln.startswith("[epoch") for ln in lines) == 5
    assert len(result.history["train"]["loss"]) == 5 and result.history["train"]["loss"][0] > 0
    loaded = load_predictor("word2vec", tmp_path)
    assert len(loaded) == 30 and loaded.vector_size == 16
    assert np.array_equal(loaded.vectors(["rock1", "jazz2"]), result.predictor.vectors(["rock1", "jazz2"]))
    neighbours = [item for item, _ in loaded.similar("rock3", topn=5)]
    assert "rock3" not in neighbours
    assert all(n.startswith("rock") for n in neighbours), neighbours
    # unknown items: zeros in batch lookups, a named error for similar()
    assert not loaded.predict(["nope"]).any()
    with pytest.raises(KeyError, match="item 'nope' is not in the vocabulary \\(30 items\\)"):
        loaded.similar("nope")
    assert loaded.feature_importance() == {}
    from gensim.models import KeyedVectors

    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "word2vec.bin"), binary=True)
    np.testing.assert_array_equal(kv["rock1"], loaded.vector("rock1"))


def test_word2vec_through_a_feature_table_list_column(tmp_path):
    sessions = _sessions(n_users=40)
    write_feature_table(
        tmp_path / "s.parquet", np.zeros((40, 0), np.float32), None, extra_columns={"sentences": sessions}
    )
    ds = read_feature_table(tmp_path / "s.parquet")
    result = get_trainer("word2vec").train(
        ds, None, {"vector_size": 8, "epochs": 1}, tmp_path / "m", log=lambda s: None
    )
    assert result.extra["vocabulary_size"] == 30
    with pytest.raises(TrainerError, match="no 'plays' column of item sequences"):
        get_trainer("word2vec").train(ds, None, {"sentences_column": "plays"}, tmp_path / "m2")
    with pytest.raises(TrainerError, match="no item occurs at least min_count=1000 times"):
        get_trainer("word2vec").train(ds, None, {"min_count": 1000}, tmp_path / "m3", log=lambda s: None)


# -------------------------------------------------------------------------------------- tensorflow


@pytest.mark.slow
def test_tensorflow_wide_and_deep_trains_logs_and_reloads(tmp_path):
    """One TensorFlow run (import + train + save + load) covering the contract."""
    train, valid = _binary(n=1600, seed=6)
    lines: list[str] = []
    params = {
        "hidden_units": "16,8",
        "epochs": 4,
        "batch_size": 128,
        "learning_rate": 0.01,
        "early_stopping_rounds": 2,
        "seed": 7,
    }
    result = get_trainer("tensorflow").train(train, valid, params, tmp_path / "a", log=lines.append)
    epochs = result.extra["epochs_run"]
    assert sum(ln.startswith("[epoch") for ln in lines) == epochs
    assert "val_auc=" in lines[0]
    assert len(result.history["valid"]["auc"]) == epochs
    loaded = load_predictor("tensorflow", tmp_path / "a")
    p = loaded.predict(valid.X)
    assert p.dtype == np.float32 and p.shape == (len(valid.X),)
    assert np.array_equal(p, result.predictor.predict(valid.X))  # reload gives the same scores
    assert not np.isnan(p).any()  # NaN inputs are imputed
    assert auc_score(valid.y, p) > 0.75
    assert set(loaded.feature_importance()) == set(train.feature_names)
    # seeded: the same data and params give the same model
    again = get_trainer("tensorflow").train(train, valid, params, tmp_path / "b", log=lambda s: None)
    assert np.array_equal(again.predictor.predict(valid.X), p)


def test_xgboost_with_names_xgboost_rejects_maps_importance_by_position(tmp_path):
    train, valid = _binary(n=600, d=4, seed=8)
    names = ["age[0]", "city<x>", "a,b", "ok"]  # not valid xgboost feature names
    train = Dataset(X=train.X, y=train.y, feature_names=names)
    result = get_trainer("xgboost").train(
        train, None, {"rounds": 5, "nthread": 1}, tmp_path, log=lambda s: None
    )
    loaded = load_predictor("xgboost", tmp_path)
    assert np.array_equal(loaded.predict(valid.X), result.predictor.predict(valid.X))
    imp = loaded.feature_importance()
    assert list(imp) == names and imp["age[0]"] > 0


def test_trainer_by_dotted_path_and_corrupt_metadata(tmp_path):
    assert get_trainer("airflow_ml_provider.ml.trainers.linear:LinearTrainer").name == "linear"
    with pytest.raises(TrainerError, match="cannot load trainer 'nowhere.mod:Thing'"):
        get_trainer("nowhere.mod:Thing")
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(TrainerError, match="corrupt model metadata"):
        load_predictor(None, tmp_path)
