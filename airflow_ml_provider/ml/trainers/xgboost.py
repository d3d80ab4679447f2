"""XGBoost trainer: ``xgboost.train`` on a DMatrix built straight from the feature table's buffer.

Params (flat dict; strings such as ``"100"`` are accepted, bad values name the key):

==========================  =================================================================
``objective``               default ``binary:logistic`` (``reg:squarederror``, ``multi:softprob``...)
``eta`` / ``learning_rate`` learning rate (xgboost default 0.3 when unset)
``max_depth``               tree depth (xgboost default 6 when unset)
``num_boost_round``         boosting rounds, alias ``rounds``; default 100
``early_stopping_rounds``   stop when the last metric on ``valid`` has not improved for N rounds
``eval_metric``             one name, a list, or ``"auc,logloss"``; the LAST drives early stopping
``tree_method``             default ``hist``
``device``                  ``cpu`` / ``cuda`` / ``cuda:1`` -- passed through unchanged
``nthread``                 threads for training and DMatrix construction (default: xgboost's)
``seed``                    random seed (default 0)
``dmatrix``                 ``dmatrix`` (default, same as a plain script) or ``quantile``
                            (``QuantileDMatrix``: less memory for ``hist``)
``eval_train``              also evaluate on the training set each round (default false)
``log_every``               log progress every N rounds (default 1)
``model_format``            ``ubj`` (default) or ``json``
``missing``                 value treated as missing (default NaN)
``extra_params``            dict merged into the booster params
any other key               passed to xgboost unchanged (free-form booster params)
==========================  =================================================================

Early stopping: the saved model holds exactly the served rounds (``0 .. best_iteration``); the
rounds trained after the best one are dropped before saving (``booster[: best_iteration + 1]``), so a
plain ``xgboost.Booster().load_model()`` gives the served scores. ``gblinear`` (not sliceable) is
saved whole.

Prediction path (the online service relies on it): :class:`XGBoostPredictor.predict` calls
``Booster.inplace_predict`` on a C-contiguous float32 array with
``iteration_range=(0, best_iteration + 1)`` -- no DMatrix -- both right after training and after
loading, so the scores are bit-identical.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from airflow_ml_provider.ml.feature_table import Dataset
from airflow_ml_provider.ml.trainers.base import (
    LogFn,
    ParamReader,
    TrainerError,
    TrainResult,
    check_xy,
    library_versions,
    prepare_out_dir,
    write_metadata,
)

FRAMEWORK = "xgboost"
_RESERVED_KEYS = (
    "objective",
    "eta",
    "learning_rate",
    "max_depth",
    "num_boost_round",
    "rounds",
    "early_stopping_rounds",
    "eval_metric",
    "tree_method",
    "device",
    "nthread",
    "seed",
    "dmatrix",
    "eval_train",
    "log_every",
    "model_format",
    "missing",
    "extra_params",
)


def _metrics_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            import json

            return [str(x) for x in json.loads(s)]
        return [x.strip() for x in s.split(",") if x.strip()]
    return [str(x) for x in v]


def task_of(objective: str) -> str:
    if objective.startswith("binary:"):
        return "binary"
    if objective.startswith("multi:"):
        return "multiclass"
    if objective.startswith("rank:"):
        return "ranking"
    return "regression"


def _valid_feature_names(names: list[str]) -> bool:
    return len(set(names)) == len(names) and all(n and not any(c in n for c in "[]<,") for n in names)


def build_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split user params into (booster params, run options). Raises TrainerError naming bad keys."""
    r = ParamReader(FRAMEWORK, params)
    booster: dict[str, Any] = {
        "objective": r.get("objective", "binary:logistic", str),
        "tree_method": r.get("tree_method", "hist", str),
    }
    eta = r.get("eta", None, float, aliases=("learning_rate",))
    if eta is not None:
        booster["eta"] = eta
    depth = r.get("max_depth", None, int)
    if depth is not None:
        booster["max_depth"] = depth
    device = r.get("device", None, str)
    if device:
        booster["device"] = device  # 'cuda' passes through unchanged
    nthread = r.get("nthread", None, int)
    if nthread is not None:
        booster["nthread"] = nthread
    booster["seed"] = r.get("seed", 0, int)
    metrics = _metrics_list(r.get("eval_metric"))
    if metrics:
        booster["eval_metric"] = metrics if len(metrics) > 1 else metrics[0]
    extra = r.get("extra_params", None)
    if extra is not None:
        if isinstance(extra, str):
            import json

            try:
                extra = json.loads(extra)
            except ValueError as exc:
                raise TrainerError(f"xgboost param 'extra_params': not valid JSON: {exc}") from None
        if not isinstance(extra, Mapping):
            raise TrainerError(f"xgboost param 'extra_params' must be a mapping, got {type(extra).__name__}")
        booster.update(extra)
    rounds = r.get("num_boost_round", 100, int, aliases=("rounds",))
    if rounds < 1:
        raise TrainerError(f"xgboost param 'num_boost_round' must be >= 1, got {rounds}")
    esr = r.get("early_stopping_rounds", None, int)
    if esr is not None and esr < 1:
        raise TrainerError(f"xgboost param 'early_stopping_rounds' must be >= 1, got {esr}")
    dm = r.get("dmatrix", "dmatrix", str)
    if dm not in ("dmatrix", "quantile"):
        raise TrainerError(f"xgboost param 'dmatrix' must be 'dmatrix' or 'quantile', got {dm!r}")
    fmt = r.get("model_format", "ubj", str)
    if fmt not in ("ubj", "json"):
        raise TrainerError(f"xgboost param 'model_format' must be 'ubj' or 'json', got {fmt!r}")
    options = {
        "num_boost_round": rounds,
        "early_stopping_rounds": esr,
        "dmatrix": dm,
        "eval_train": r.get("eval_train", False, bool),
        "log_every": max(1, r.get("log_every", 1, int)),
        "model_format": fmt,
        "missing": r.get("missing", math.nan, float),
        "nthread": nthread,
    }
    # free-form booster params: everything not consumed above
    for k in r.unknown():
        if k not in _RESERVED_KEYS:
            booster[k] = params[k]
    return booster, options


def _make_callback(log: LogFn, every: int, total: int):
    import xgboost as xgb

    class ProgressLog(xgb.callback.TrainingCallback):
        """Logs each iteration's eval metrics (``[12/100] valid-auc=0.8123``) through ``log``."""

        def __init__(self) -> None:
            super().__init__()
            self.t0 = time.perf_counter()

        def after_iteration(self, model, epoch: int, evals_log) -> bool:
            if (epoch + 1) % every == 0 or epoch + 1 == total:
                parts = [
                    f"{data}-{metric}={values[-1]:.6g}"
                    for data, metrics in evals_log.items()
                    for metric, values in metrics.items()
                    if values
                ]
                log(
                    f"[{epoch + 1}/{total}] {' '.join(parts) or 'no eval set'}"
                    f" ({time.perf_counter() - self.t0:.1f}s)"
                )
            return False

    return ProgressLog()


def make_dmatrix(ds: Dataset, kind: str, missing: float, nthread: int | None, ref=None):
    """DMatrix / QuantileDMatrix straight from the zero-copy float32 array (no pandas, no copy)."""
    import xgboost as xgb

    kw: dict[str, Any] = {"label": ds.y, "missing": missing}
    if nthread is not None:
        kw["nthread"] = nthread
    if kind == "quantile":
        return xgb.QuantileDMatrix(ds.X, ref=ref, **kw)
    return xgb.DMatrix(ds.X, **kw)


class XGBoostTrainer:
    """``get_trainer("xgboost")``."""

    name = FRAMEWORK

    def train(
        self,
        train: Dataset,
        valid: Dataset | None,
        params: Mapping[str, Any],
        out_dir: str | os.PathLike,
        log: LogFn = print,
    ) -> TrainResult:
        import xgboost as xgb

        booster_params, opt = build_params(params or {})
        check_xy(train, "training")
        if valid is not None:
            check_xy(valid, "validation")
            if valid.n_features != train.n_features:
                raise TrainerError(
                    f"validation data has {valid.n_features} features, training data {train.n_features}"
                )
        if opt["early_stopping_rounds"] and valid is None:
            raise TrainerError("xgboost param 'early_stopping_rounds' needs a validation dataset")
        out = prepare_out_dir(out_dir)

        dtrain = make_dmatrix(train, opt["dmatrix"], opt["missing"], opt["nthread"])
        evals = []
        if opt["eval_train"]:
            evals.append((dtrain, "train"))
        if valid is not None:
            ref = dtrain if opt["dmatrix"] == "quantile" else None
            evals.append((make_dmatrix(valid, opt["dmatrix"], opt["missing"], opt["nthread"], ref), "valid"))
        history: dict[str, dict[str, list[float]]] = {}
        log(
            f"xgboost {xgb.__version__}: {train.n_rows} x {train.n_features} train rows"
            f"{f', {valid.n_rows} valid rows' if valid is not None else ''}; params {booster_params}, "
            f"rounds={opt['num_boost_round']}, early_stopping_rounds={opt['early_stopping_rounds']}"
        )
        t0 = time.perf_counter()
        booster = xgb.train(
            booster_params,
            dtrain,
            num_boost_round=opt["num_boost_round"],
            evals=evals,
            early_stopping_rounds=opt["early_stopping_rounds"],
            evals_result=history,
            verbose_eval=False,
            callbacks=[_make_callback(log, opt["log_every"], opt["num_boost_round"])],
        )
        seconds = time.perf_counter() - t0
        return save_trained(booster, history, booster_params, opt, list(train.feature_names), out, seconds, log)


def save_trained(
    booster,
    history: Mapping[str, Mapping[str, Any]],
    booster_params: Mapping[str, Any],
    opt: Mapping[str, Any],
    feature_names: list[str],
    out: Path,
    seconds: float,
    log: LogFn,
    extra: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Save a trained booster as every xgboost model directory is saved (model file + metadata.json)
    and return its :class:`TrainResult` with the in-memory predictor.

    The one place that decides the saved format: the single-process trainer, the Dask trainer and
    the external-memory trainer (:mod:`airflow_ml_provider.ml.trainers.xgboost_dask`) all end here,
    so their models bundle and serve the same way.
    """
    rounds_done = booster.num_boosted_rounds()
    best = getattr(booster, "best_iteration", None) if opt["early_stopping_rounds"] else None
    if best is None:
        best = rounds_done - 1
    best = int(best)
    booster, sliced = _served_trees(booster, best, log)
    if _valid_feature_names(feature_names):
        booster.feature_names = list(feature_names)
    model_file = f"model.{opt['model_format']}"
    tmp = out / f".tmp-model.{opt['model_format']}"  # keep the extension: it selects the format
    booster.save_model(str(tmp))
    os.replace(tmp, out / model_file)
    log(
        f"trained {rounds_done} rounds in {seconds:.2f}s; best iteration {best}; wrote {out / model_file}"
        + (f" (the {best + 1} rounds up to the best iteration)" if sliced else "")
    )

    task = task_of(str(booster_params["objective"]))
    result = TrainResult(
        framework=FRAMEWORK,
        model_files=[model_file, "metadata.json"],
        params={
            **booster_params,
            **{k: v for k, v in opt.items() if k != "missing"},
            "missing": None if math.isnan(opt["missing"]) else opt["missing"],
        },
        library_versions=library_versions("xgboost"),
        best_iteration=best,
        history={k: {m: [float(x) for x in v] for m, v in d.items()} for k, d in history.items()},
        feature_names=list(feature_names),
        task=task,
        out_dir=str(out),
        extra={
            "num_boosted_rounds": rounds_done,
            "saved_rounds": booster.num_boosted_rounds(),
            "train_seconds": round(seconds, 4),
            "predict_method": "inplace_predict",
            "iteration_range": [0, best + 1],
            **dict(extra or {}),
        },
    )
    write_metadata(out, result, {"model_file": model_file})
    result.predictor = XGBoostPredictor(booster, result.feature_names, task, best, opt["missing"])
    return result


def _served_trees(booster, best: int, log: LogFn):
    """The booster to save: early stopping trains ``best + 1 + early_stopping_rounds`` rounds, but only
    the rounds up to the best iteration are served, so only those are saved. A plain
    ``xgboost.Booster().load_model()`` + ``predict`` of the saved file then gives the served scores
    (tests/test_trainers.py checks it bit for bit). Returns (booster, whether it was sliced).

    ``gblinear`` cannot be sliced (it has no trees, xgboost refuses); it is saved whole, as before.
    """
    rounds = booster.num_boosted_rounds()
    if best + 1 >= rounds:
        return booster, False
    try:
        sliced = booster[: best + 1]
    except Exception as exc:  # noqa: BLE001 - xgboost.core.XGBoostError: "Slice is not supported"
        log(f"keeping all {rounds} rounds in the saved model: xgboost cannot slice this booster ({exc})")
        return booster, False
    attrs = booster.attributes()  # slicing drops them; keep them true for the sliced model
    sliced.set_attr(**{k: v for k, v in attrs.items() if k not in ("best_iteration", "best_ntree_limit")},
                    best_iteration=str(best))
    return sliced, True


class _DensePredict:
    """``Booster.inplace_predict`` on a C-contiguous float32 matrix, without its Python layer.

    Hand-written because it is measured faster (issue 13; 100 trees of depth 6, 42 features, one
    thread): ``inplace_predict`` spends ~110 us of its ~200 us per single-row call in Python --
    re-encoding the same JSON config, checking a dozen input types, a class built per call -- before
    the C call, which is the same ``XGBoosterPredictFromDense`` this calls with the config encoded
    once. It also passes a proxy DMatrix kept per thread: without one the C side makes a new proxy
    per call, whose set-up reads the cgroup CPU quota files (``strace``: 3 stat + 2 open/read/close
    per call; 35-60 us, more on a busy machine). The scores are the library's own; :meth:`XGBoostPredictor._fast_or_none` compares them
    bit for bit with ``inplace_predict`` when the predictor is made and falls back to it on any
    difference or error (a future xgboost that changes this C API then only loses the speed-up).
    """

    def __init__(self, booster, iteration_end: int, missing: float) -> None:
        import ctypes
        import json
        import threading

        from xgboost.core import _LIB, c_bst_ulong

        self._ctypes = ctypes
        self._call = _LIB.XGBoosterPredictFromDense
        self._booster = booster  # keeps the handle alive
        self._handle = booster.handle
        # what inplace_predict sends (json.dumps writes NaN as NaN, which xgboost reads)
        self._config = json.dumps({"type": 0, "training": False, "iteration_begin": 0,
                                   "iteration_end": int(iteration_end), "missing": float(missing),
                                   "strict_shape": False, "cache_id": 0}).encode()
        self._ulong = c_bst_ulong
        self._local = threading.local()  # output pointers per thread (the C side's buffers are too)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        ctypes = self._ctypes
        local = self._local
        out = getattr(local, "out", None)
        if out is None:
            shape, dims, preds = ctypes.POINTER(self._ulong)(), self._ulong(), ctypes.POINTER(ctypes.c_float)()
            out = local.out = (shape, dims, preds, ctypes.byref(shape), ctypes.byref(dims), ctypes.byref(preds),
                               _proxy())
        shape, dims, preds, shape_ref, dims_ref, preds_ref, proxy = out
        n, m = X.shape
        interface = (f'{{"data":[{X.ctypes.data},true],"shape":[{n},{m}],"strides":null,'
                     f'"typestr":"<f4","version":3}}').encode()
        handle = proxy.handle if proxy is not None else None
        if self._call(self._handle, interface, self._config, handle, shape_ref, dims_ref, preds_ref) != 0:
            from xgboost.core import XGBoostError, _LIB

            raise XGBoostError(_LIB.XGBGetLastError().decode())
        dims_n = dims.value
        out_shape = tuple(int(shape[i]) for i in range(dims_n))
        size = 1
        for d in out_shape:
            size *= d
        # copy out of xgboost's per-thread buffer (the next call in this thread reuses it)
        return np.ctypeslib.as_array(preds, shape=(size,)).copy().reshape(out_shape)


def _proxy():
    """A proxy DMatrix for the C predict call (None, i.e. one made per call, if this xgboost has none)."""
    try:
        from xgboost.core import _ProxyDMatrix

        return _ProxyDMatrix()
    except Exception:  # noqa: BLE001
        return None


class XGBoostPredictor:
    """A loaded booster; ``predict`` = ``inplace_predict`` over ``iteration_range=(0, best+1)``."""

    framework = FRAMEWORK

    def __init__(self, booster, feature_names: list[str], task: str, best_iteration: int, missing: float):
        self.booster = booster
        self.feature_names = list(feature_names)
        self.task = task
        self.best_iteration = int(best_iteration)
        self.missing = missing
        self.n_features = len(self.feature_names)
        self._fast = self._fast_or_none()

    def _fast_or_none(self) -> _DensePredict | None:
        """The direct C call, if it answers exactly what ``inplace_predict`` does on sample rows."""
        if not self.n_features:
            return None
        try:
            fast = _DensePredict(self.booster, self.best_iteration + 1, self.missing)
            rng = np.random.default_rng(0)
            for rows in (1, 3, 70):
                X = rng.normal(0.0, 3.0, size=(rows, self.n_features)).astype(np.float32)
                X[rng.random(X.shape) < 0.2] = np.nan
                if not np.array_equal(fast(X), self._library_predict(X), equal_nan=True):
                    return None
            return fast
        except Exception:  # noqa: BLE001 - any doubt: the library's own path
            return None

    def _library_predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(
            X, iteration_range=(0, self.best_iteration + 1), missing=self.missing, validate_features=False
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if not X.flags.c_contiguous:
            X = np.ascontiguousarray(X)
        if X.shape[1] != self.n_features:
            raise TrainerError(f"model expects {self.n_features} features, got {X.shape[1]}")
        if self._fast is not None and X.shape[0]:
            return self._fast(X)
        return self._library_predict(X)

    def feature_importance(self, importance_type: str = "gain") -> dict[str, float]:
        """Per-feature ``gain`` (default), ``weight``, ``cover``, ``total_gain`` or ``total_cover``.

        Features never used in a split get 0.0.
        """
        scores = self.booster.get_score(importance_type=importance_type)
        out = {n: 0.0 for n in self.feature_names}
        for k, v in scores.items():
            if k in out:
                out[k] = float(v)
            elif k.startswith("f") and k[1:].isdigit() and int(k[1:]) < self.n_features:
                out[self.feature_names[int(k[1:])]] = float(v)
        return out


def load_predictor(model_dir: Path, meta: dict[str, Any]) -> XGBoostPredictor:
    import xgboost as xgb

    model_file = meta.get("model_file") or next(
        (f for f in meta.get("model_files", []) if f.startswith("model.")), "model.ubj"
    )
    path = model_dir / model_file
    if not path.exists():
        raise TrainerError(f"{path}: xgboost model file missing")
    booster = xgb.Booster()
    booster.load_model(str(path))
    missing = meta.get("params", {}).get("missing")
    return XGBoostPredictor(
        booster,
        meta.get("feature_names", []),
        meta.get("task", "binary"),
        int(
            meta.get("best_iteration")
            if meta.get("best_iteration") is not None
            else booster.num_boosted_rounds() - 1
        ),
        math.nan if missing is None else float(missing),
    )
