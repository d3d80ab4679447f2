"""A small Keras wide & deep network (tensorflow-cpu) for binary classification or regression.

Architecture: input -> Normalization (mean/variance adapted on the training data) -> a deep tower
of ``Dense(relu)`` layers (``hidden_units``, optional dropout) concatenated with the normalized
input itself (the "wide", linear part) -> ``Dense(1)`` with a sigmoid (binary) or linear (regression)
output. Missing values (NaN, +-inf) are replaced by the training mean of the column before the
network; the means are stored in ``metadata.json``.

Params:

=========================  ===================================================================
``task``                   ``binary`` or ``regression``; default inferred from the label
``hidden_units``           list of layer sizes, default ``[64, 32]`` (also ``"64,32"``)
``dropout``                default 0.0
``epochs``                 default 5
``batch_size``             default 256
``learning_rate``          Adam learning rate, default 1e-3
``l2``                     L2 weight penalty on the deep layers, default 0
``wide``                   include the linear (wide) part, default true
``early_stopping_rounds``  patience in epochs on the validation loss (best weights restored)
``seed``                   default 0; seeds Python, numpy and TensorFlow and turns on
                           deterministic ops, so the same data gives the same model
=========================  ===================================================================

Each epoch's loss and metrics (AUC for binary, RMSE for regression) are logged. The model is
saved as ``model.keras``. :class:`TensorFlowPredictor.predict` runs the model in inference mode
on fixed batches of 4096 rows; the same call on the loaded model gives the same scores as right
after training.
"""

from __future__ import annotations

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
    int_list,
    library_versions,
    prepare_out_dir,
    write_metadata,
)
from airflow_ml_provider.ml.trainers.linear import column_fill

FRAMEWORK = "tensorflow"
MODEL_FILE = "model.keras"
PREDICT_BATCH = 4096


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


class TensorFlowPredictor:
    framework = FRAMEWORK

    def __init__(self, model, feature_names: list[str], task: str, fill: np.ndarray):
        self.model = model
        self.feature_names = list(feature_names)
        self.task = task
        self.fill = np.asarray(fill, dtype=np.float32)

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.shape[1] != len(self.fill):
            raise TrainerError(f"model expects {len(self.fill)} features, got {X.shape[1]}")
        return np.ascontiguousarray(np.where(np.isfinite(X), X, self.fill), dtype=np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = self._prepare(X)
        parts = [
            np.asarray(self.model(X[i : i + PREDICT_BATCH], training=False)).reshape(-1)
            for i in range(0, len(X), PREDICT_BATCH)
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def feature_importance(self) -> dict[str, float]:
        """Mean |weight| from each (normalized) input into the first deep layer, plus |wide weight|."""
        d = len(self.feature_names)
        total = np.zeros(d)
        names = {layer.name: layer for layer in self.model.layers}
        if "deep_0" in names:
            total += np.abs(np.asarray(names["deep_0"].kernel)).mean(axis=1)
        if "wide_and_deep" in names or "deep_0" not in names:  # the output layer sees the inputs directly
            total += np.abs(np.asarray(names["output"].kernel)[:d, 0])
        return {n: float(v) for n, v in zip(self.feature_names, total, strict=True)}


def build_model(tf, d: int, task: str, hidden: list[int], dropout: float, l2: float, wide: bool, X_adapt):
    layers = tf.keras.layers
    inp = tf.keras.Input(shape=(d,), name="features")
    norm = layers.Normalization(name="normalize")
    norm.adapt(X_adapt)
    x0 = norm(inp)
    x = x0
    reg = tf.keras.regularizers.L2(l2) if l2 > 0 else None
    for i, units in enumerate(hidden):
        x = layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"deep_{i}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"dropout_{i}")(x)
    if wide:
        x = layers.Concatenate(name="wide_and_deep")([x0, x]) if hidden else x0
    out = layers.Dense(1, activation="sigmoid" if task == "binary" else None, name="output")(x)
    return tf.keras.Model(inp, out, name="wide_and_deep")


class TensorFlowTrainer:
    """``get_trainer("tensorflow")``."""

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
        hidden = r.get("hidden_units", [64, 32], int_list)
        dropout = r.get("dropout", 0.0, float)
        epochs = r.get("epochs", 5, int)
        batch_size = r.get("batch_size", 256, int)
        lr = r.get("learning_rate", 1e-3, float)
        l2 = r.get("l2", 0.0, float)
        wide = r.get("wide", True, bool)
        patience = r.get("early_stopping_rounds", None, int)
        seed = r.get("seed", 0, int)
        r.reject_unknown()
        if epochs < 1 or batch_size < 1 or any(u < 1 for u in hidden):
            raise TrainerError("tensorflow params 'epochs', 'batch_size' and 'hidden_units' must be >= 1")
        if not hidden and not wide:
            raise TrainerError("tensorflow: with no hidden_units the model needs wide=true")
        check_xy(train, "training")
        if valid is not None:
            check_xy(valid, "validation")
        if patience is not None and valid is None:
            raise TrainerError("tensorflow param 'early_stopping_rounds' needs a validation dataset")
        out = prepare_out_dir(out_dir)

        tf = _tf()
        tf.keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
        fill = column_fill(train.X).astype(np.float32)

        def prep(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
            X = np.where(np.isfinite(ds.X), ds.X, fill).astype(np.float32)
            return X, np.asarray(ds.y, dtype=np.float32)

        Xtr, ytr = prep(train)
        model = build_model(tf, train.n_features, task, hidden, dropout, l2, wide, Xtr)
        if task == "binary":
            loss, metrics, names = (
                "binary_crossentropy",
                [tf.keras.metrics.AUC(name="auc")],
                ("logloss", "auc"),
            )
        else:
            loss, metrics, names = "mse", [tf.keras.metrics.RootMeanSquaredError(name="rmse")], ("l2", "rmse")
        model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=lr), loss=loss, metrics=metrics)

        class EpochLog(tf.keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                parts = " ".join(f"{k}={float(v):.6g}" for k, v in logs.items() if k != "learning_rate")
                log(f"[epoch {epoch + 1}/{epochs}] {parts} ({time.perf_counter() - self.t0:.1f}s)")

        callbacks: list[Any] = [EpochLog()]
        validation_data = prep(valid) if valid is not None else None
        if patience:
            callbacks.append(
                tf.keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=patience, restore_best_weights=True
                )
            )
        t0 = time.perf_counter()
        fit = model.fit(
            Xtr,
            ytr,
            validation_data=validation_data,
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            callbacks=callbacks,
            verbose=0,
        )
        seconds = time.perf_counter() - t0
        h = {k: [float(x) for x in v] for k, v in fit.history.items()}
        history = {"train": {names[0]: h.get("loss", []), names[1]: h.get(names[1], [])}}
        best = None
        if valid is not None:
            history["valid"] = {names[0]: h.get("val_loss", []), names[1]: h.get(f"val_{names[1]}", [])}
            best = int(np.argmin(history["valid"][names[0]])) if patience else len(h.get("val_loss", [])) - 1
        tmp = out / f".tmp-{MODEL_FILE}"
        model.save(tmp)
        os.replace(tmp, out / MODEL_FILE)
        log(
            f"tensorflow ({task}) trained {len(h.get('loss', []))} epochs in {seconds:.2f}s; wrote {out / MODEL_FILE}"
        )
        result = TrainResult(
            framework=FRAMEWORK,
            model_files=[MODEL_FILE, "metadata.json"],
            params={
                "task": task,
                "hidden_units": hidden,
                "dropout": dropout,
                "epochs": epochs,
                "batch_size": batch_size,
                "learning_rate": lr,
                "l2": l2,
                "wide": wide,
                "early_stopping_rounds": patience,
                "seed": seed,
            },
            library_versions=library_versions("tensorflow-cpu", "tensorflow", "keras"),
            best_iteration=best,
            history=history,
            feature_names=list(train.feature_names),
            task=task,
            out_dir=str(out),
            extra={
                "epochs_run": len(h.get("loss", [])),
                "train_seconds": round(seconds, 4),
                "fill": fill.tolist(),
                "predict_batch": PREDICT_BATCH,
            },
        )
        write_metadata(out, result)
        result.predictor = TensorFlowPredictor(model, train.feature_names, task, fill)
        return result


def load_predictor(model_dir: Path, meta: dict[str, Any]) -> TensorFlowPredictor:
    tf = _tf()
    path = model_dir / MODEL_FILE
    if not path.exists():
        raise TrainerError(f"{path}: tensorflow model file missing")
    model = tf.keras.models.load_model(path, compile=False)
    fill = np.asarray(meta.get("extra", {}).get("fill", []), dtype=np.float32)
    return TensorFlowPredictor(model, meta.get("feature_names", []), meta.get("task", "binary"), fill)
