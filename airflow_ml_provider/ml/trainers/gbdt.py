"""GBDT with scikit-learn's HistGradientBoostingClassifier / Regressor.

Params:

=========================  =====================================================================
``task``                   ``binary`` or ``regression``; default inferred from the label
``learning_rate``          default 0.1 (alias ``eta``)
``max_iter``               boosting iterations, default 100 (aliases ``rounds``, ``num_boost_round``)
``max_depth``              default unlimited (``max_leaf_nodes`` bounds the trees)
``max_leaf_nodes``         default 31
``min_samples_leaf``       default 20
``l2_regularization``      default 0
``max_bins``               default 255
``early_stopping_rounds``  with a validation set: stop after N iterations without improvement of
                           the validation loss (sklearn ``n_iter_no_change``); default off
``seed``                   default 0
=========================  =====================================================================

NaN is native missing-value support. The model is saved with pickle (``model.pkl``), the only
format scikit-learn offers; ``metadata.json`` records the scikit-learn version and loading under a
different version emits a warning. Load bundles you trust only (the bundle's checksums guard
against tampering in storage). ``feature_importance`` is the total split gain per feature.
"""

from __future__ import annotations

import os
import pickle
import time
import warnings
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

FRAMEWORK = "gbdt"
MODEL_FILE = "model.pkl"


class GBDTPredictor:
    framework = FRAMEWORK

    def __init__(self, model, feature_names: list[str], task: str):
        self.model = model
        self.feature_names = list(feature_names)
        self.task = task

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.shape[1] != len(self.feature_names):
            raise TrainerError(f"model expects {len(self.feature_names)} features, got {X.shape[1]}")
        if self.task == "binary":
            return self.model.predict_proba(X)[:, 1]
        return self.model.predict(X)

    def feature_importance(self) -> dict[str, float]:
        """Total split gain per feature, summed over all trees."""
        gains = np.zeros(len(self.feature_names))
        for trees in getattr(self.model, "_predictors", []):
            for tree in trees:
                nodes = tree.nodes
                split = ~nodes["is_leaf"].astype(bool)
                np.add.at(gains, nodes["feature_idx"][split], nodes["gain"][split])
        return {n: float(g) for n, g in zip(self.feature_names, gains, strict=True)}


class GBDTTrainer:
    """``get_trainer("gbdt")``."""

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
        kw: dict[str, Any] = {
            "learning_rate": r.get("learning_rate", 0.1, float, aliases=("eta",)),
            "max_iter": r.get("max_iter", 100, int, aliases=("rounds", "num_boost_round")),
            "max_depth": r.get("max_depth", None, int),
            "max_leaf_nodes": r.get("max_leaf_nodes", 31, int),
            "min_samples_leaf": r.get("min_samples_leaf", 20, int),
            "l2_regularization": r.get("l2_regularization", 0.0, float),
            "max_bins": r.get("max_bins", 255, int),
            "random_state": r.get("seed", 0, int),
        }
        esr = r.get("early_stopping_rounds", None, int)
        r.reject_unknown()
        check_xy(train, "training")
        if valid is not None:
            check_xy(valid, "validation")
        if esr is not None and valid is None:
            raise TrainerError("gbdt param 'early_stopping_rounds' needs a validation dataset")
        out = prepare_out_dir(out_dir)
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingClassifier if task == "binary" else HistGradientBoostingRegressor
        fit_kw: dict[str, Any] = {}
        if valid is not None:
            # an explicit validation set: scores are recorded every iteration (and drive early stopping)
            kw.update(early_stopping=True, scoring="loss", n_iter_no_change=esr or kw["max_iter"] + 1)
            fit_kw = {"X_val": valid.X, "y_val": valid.y}
        else:
            kw["early_stopping"] = False
        model = cls(**kw)
        t0 = time.perf_counter()
        model.fit(train.X, train.y, **fit_kw)
        seconds = time.perf_counter() - t0
        loss_name = "logloss" if task == "binary" else "l2"
        history: dict[str, dict[str, list[float]]] = {}
        best = None
        if valid is not None:
            # scoring="loss" stores the NEGATIVE loss; index 0 is the baseline before any tree
            history["train"] = {loss_name: [float(-s) for s in model.train_score_[1:]]}
            history["valid"] = {loss_name: [float(-s) for s in model.validation_score_[1:]]}
            best = int(np.argmin(history["valid"][loss_name]))
            for i, (a, b) in enumerate(
                zip(history["train"][loss_name], history["valid"][loss_name], strict=True)
            ):
                log(f"[{i + 1}/{kw['max_iter']}] train-{loss_name}={a:.6g} valid-{loss_name}={b:.6g}")
        log(f"gbdt ({task}) fitted {model.n_iter_} iterations in {seconds:.2f}s")
        tmp = out / f".{MODEL_FILE}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, out / MODEL_FILE)
        result = TrainResult(
            framework=FRAMEWORK,
            model_files=[MODEL_FILE, "metadata.json"],
            params={
                "task": task,
                **{k: v for k, v in kw.items() if k not in ("early_stopping", "scoring")},
                "early_stopping_rounds": esr,
            },
            library_versions=library_versions("scikit-learn"),
            best_iteration=best,
            history=history,
            feature_names=list(train.feature_names),
            task=task,
            out_dir=str(out),
            extra={"n_iter": int(model.n_iter_), "train_seconds": round(seconds, 4)},
        )
        write_metadata(out, result)
        result.predictor = GBDTPredictor(model, train.feature_names, task)
        return result


def load_predictor(model_dir: Path, meta: dict[str, Any]) -> GBDTPredictor:
    import sklearn

    path = model_dir / MODEL_FILE
    trained_with = meta.get("library_versions", {}).get("scikit-learn")
    if trained_with and trained_with != sklearn.__version__:
        warnings.warn(
            f"{path}: trained with scikit-learn {trained_with}, loading with {sklearn.__version__}",
            stacklevel=2,
        )
    try:
        with open(path, "rb") as fh:
            model = pickle.load(fh)
    except FileNotFoundError:
        raise TrainerError(f"{path}: gbdt model file missing") from None
    return GBDTPredictor(model, meta.get("feature_names", []), meta.get("task", "binary"))
