"""Linear models: logistic regression (binary) and linear / ridge regression, fitted with scikit-learn.

Params:

=================  ==========================================================================
``task``           ``binary`` or ``regression``; default inferred from the label (0/1 -> binary)
``C``              inverse L2 strength for logistic regression (default 1.0)
``penalty``        ``l2`` (default), ``l1`` (uses the ``liblinear`` solver) or ``none``
``max_iter``       solver iterations (default 500)
``class_weight``   ``balanced`` or unset
``alpha``          L2 strength for regression: 0 (default) = ordinary least squares, > 0 = ridge
``standardize``    scale features to mean 0 / std 1 before fitting (default true)
``fit_intercept``  default true
=================  ==========================================================================

Missing values (NaN, +-inf) are replaced by the training mean of the column (recorded in the
model). The model is saved as plain JSON (``model.json``: coefficients, intercept, means, scales),
not a pickle: the predictor needs numpy only, so the online service does not import sklearn, and a
reload reproduces the scores bit for bit. ``feature_importance`` is ``|coefficient|`` on the
standardized scale.
"""

from __future__ import annotations

import json
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
    infer_task,
    library_versions,
    prepare_out_dir,
    write_metadata,
)

FRAMEWORK = "linear"
MODEL_FILE = "model.json"


def column_fill(X: np.ndarray) -> np.ndarray:
    """Per-column mean of the finite values (0 for an all-missing column)."""
    finite = np.isfinite(X)
    counts = finite.sum(axis=0)
    sums = np.where(finite, X, 0).sum(axis=0, dtype=np.float64)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


class LinearPredictor:
    """numpy-only scorer: ``sigmoid(((x - mean) / scale) . coef + intercept)`` (binary) or the linear value."""

    framework = FRAMEWORK

    def __init__(self, state: Mapping[str, Any], feature_names: list[str], task: str):
        self.coef = np.asarray(state["coef"], dtype=np.float64)
        self.intercept = float(state["intercept"])
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.scale = np.asarray(state["scale"], dtype=np.float64)
        self.fill = np.asarray(state["fill"], dtype=np.float64)
        self.feature_names = list(feature_names)
        self.task = task

    def state(self) -> dict[str, Any]:
        return {
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "fill": self.fill.tolist(),
        }

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.shape[1] != len(self.coef):
            raise TrainerError(f"model expects {len(self.coef)} features, got {X.shape[1]}")
        X = np.where(np.isfinite(X), X, self.fill)
        return (X - self.mean) / self.scale

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self.transform(X) @ self.coef + self.intercept

    def predict(self, X: np.ndarray) -> np.ndarray:
        z = self.decision_function(X)
        return _sigmoid(z) if self.task == "binary" else z

    def feature_importance(self) -> dict[str, float]:
        return {n: float(abs(c)) for n, c in zip(self.feature_names, self.coef, strict=True)}


class LinearTrainer:
    """``get_trainer("linear")``."""

    name = FRAMEWORK

    def train(
        self,
        train: Dataset,
        valid: Dataset | None,
        params: Mapping[str, Any],
        out_dir: str | os.PathLike,
        log: LogFn = print,
    ) -> TrainResult:
        r = ParamReader(FRAMEWORK, params)
        task = infer_task(train.y, r.get("task", None, str))
        C = r.get("C", 1.0, float)
        penalty = r.get("penalty", "l2", str)
        max_iter = r.get("max_iter", 500, int)
        class_weight = r.get("class_weight", None, str)
        alpha = r.get("alpha", 0.0, float)
        standardize = r.get("standardize", True, bool)
        fit_intercept = r.get("fit_intercept", True, bool)
        seed = r.get("seed", 0, int)
        r.reject_unknown()
        if penalty not in ("l2", "l1", "none"):
            raise TrainerError(f"linear param 'penalty' must be l2, l1 or none, got {penalty!r}")
        if class_weight not in (None, "balanced"):
            raise TrainerError(
                f"linear param 'class_weight' must be 'balanced' or unset, got {class_weight!r}"
            )
        check_xy(train, "training")
        if valid is not None:
            check_xy(valid, "validation")
        out = prepare_out_dir(out_dir)

        X = train.X
        fill = column_fill(X)
        Xf = np.where(np.isfinite(X), X, fill).astype(np.float64)
        if standardize:
            mean = Xf.mean(axis=0)
            scale = Xf.std(axis=0)
            scale[scale == 0] = 1.0
        else:
            mean = np.zeros(X.shape[1])
            scale = np.ones(X.shape[1])
        Z = (Xf - mean) / scale
        y = np.asarray(train.y, dtype=np.float64)
        t0 = time.perf_counter()
        if task == "binary":
            from sklearn.linear_model import LogisticRegression

            kw: dict[str, Any] = {
                "max_iter": max_iter,
                "fit_intercept": fit_intercept,
                "class_weight": class_weight,
                "random_state": seed,
            }
            if penalty == "none":
                kw["C"] = np.inf
            elif penalty == "l1":
                kw.update(C=C, l1_ratio=1.0, solver="liblinear")
            else:
                kw["C"] = C
            model = LogisticRegression(**kw)
            model.fit(Z, y.astype(int))
            coef, intercept = (
                model.coef_.ravel(),
                float(np.ravel(model.intercept_)[0]) if fit_intercept else 0.0,
            )
            n_iter = int(np.max(model.n_iter_))
        else:
            from sklearn.linear_model import LinearRegression, Ridge

            model = (
                Ridge(alpha=alpha, fit_intercept=fit_intercept)
                if alpha > 0
                else LinearRegression(fit_intercept=fit_intercept)
            )
            model.fit(Z, y)
            coef, intercept = (
                np.ravel(model.coef_),
                float(np.ravel(model.intercept_)[0]) if fit_intercept else 0.0,
            )
            n_iter = 1
        seconds = time.perf_counter() - t0
        predictor = LinearPredictor(
            {"coef": coef, "intercept": intercept, "mean": mean, "scale": scale, "fill": fill},
            train.feature_names,
            task,
        )
        history = _history(predictor, train, valid, task)
        log(
            f"linear ({task}) fitted in {seconds:.2f}s, {n_iter} solver iterations; "
            + " ".join(f"{k}-{m}={v[-1]:.6g}" for k, d in history.items() for m, v in d.items())
        )
        tmp = out / f".{MODEL_FILE}.tmp"
        tmp.write_text(json.dumps({"format_version": 1, "task": task, **predictor.state()}))
        os.replace(tmp, out / MODEL_FILE)

        result = TrainResult(
            framework=FRAMEWORK,
            model_files=[MODEL_FILE, "metadata.json"],
            params={
                "task": task,
                "C": C,
                "penalty": penalty,
                "max_iter": max_iter,
                "class_weight": class_weight,
                "alpha": alpha,
                "standardize": standardize,
                "fit_intercept": fit_intercept,
                "seed": seed,
            },
            library_versions=library_versions("scikit-learn"),
            best_iteration=None,
            history=history,
            feature_names=list(train.feature_names),
            task=task,
            out_dir=str(out),
            extra={"solver_iterations": n_iter, "train_seconds": round(seconds, 4)},
        )
        write_metadata(out, result)
        result.predictor = predictor
        return result


def _history(
    predictor, train: Dataset, valid: Dataset | None, task: str
) -> dict[str, dict[str, list[float]]]:
    from airflow_ml_provider.ml import metrics as M

    out: dict[str, dict[str, list[float]]] = {}
    for name, ds in (("train", train), ("valid", valid)):
        if ds is None:
            continue
        p = predictor.predict(ds.X)
        if task == "binary":
            out[name] = {"logloss": [M.log_loss(ds.y, p)]}
            auc = M.auc_score(ds.y, p)
            if auc is not None:
                out[name]["auc"] = [auc]
        else:
            out[name] = {"rmse": [float(np.sqrt(np.mean((p - ds.y) ** 2)))]}
    return out


def load_predictor(model_dir: Path, meta: dict[str, Any]) -> LinearPredictor:
    path = model_dir / MODEL_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainerError(f"{path}: linear model file missing") from None
    return LinearPredictor(
        state, meta.get("feature_names", []), state.get("task", meta.get("task", "binary"))
    )
