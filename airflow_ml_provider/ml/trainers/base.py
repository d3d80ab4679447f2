"""The trainer contract shared by every framework adapter.

A trainer turns a training :class:`Dataset` (plus an optional validation one) and a flat
``params`` dict into model files in ``out_dir`` and a :class:`TrainResult`. Every trainer also
writes ``out_dir/metadata.json`` (framework, params, library versions, feature names, best
iteration, eval history, model files), which :func:`load_predictor` reads back.

This module imports no heavy library; each adapter imports its framework inside ``train`` and
inside its predictor's loader.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from importlib import metadata as _md
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from airflow_ml_provider.ml.feature_table import Dataset

__all__ = [
    "METADATA_FILE",
    "Dataset",
    "LogFn",
    "Predictor",
    "TrainResult",
    "Trainer",
    "TrainerError",
    "available_trainers",
    "get_trainer",
    "library_versions",
    "load_predictor",
    "read_metadata",
]

METADATA_FILE = "metadata.json"
METADATA_FORMAT_VERSION = 1

LogFn = Callable[[str], Any]

#: framework name -> "module:Class" of the trainer
_TRAINERS: dict[str, str] = {
    "xgboost": "airflow_ml_provider.ml.trainers.xgboost:XGBoostTrainer",
    "tensorflow": "airflow_ml_provider.ml.trainers.tensorflow:TensorFlowTrainer",
    "word2vec": "airflow_ml_provider.ml.trainers.word2vec:Word2VecTrainer",
    "linear": "airflow_ml_provider.ml.trainers.linear:LinearTrainer",
    "gbdt": "airflow_ml_provider.ml.trainers.gbdt:GBDTTrainer",
}
_ALIASES = {"xgb": "xgboost", "tf": "tensorflow", "keras": "tensorflow", "lr": "linear", "w2v": "word2vec"}


class TrainerError(ValueError):
    """Bad trainer name, bad params (names the key) or unusable training data."""


@dataclass
class TrainResult:
    """What a trainer returns (and records in ``metadata.json``).

    :param framework: ``xgboost``, ``tensorflow``, ``word2vec``, ``linear`` or ``gbdt``.
    :param model_files: file names relative to ``out_dir`` (metadata.json included).
    :param params: the effective parameters (defaults filled in).
    :param library_versions: ``{"xgboost": "3.2.0", "numpy": ...}``.
    :param best_iteration: best boosting round / epoch (0-based), or None.
    :param history: ``{"valid": {"auc": [..per iteration..]}, "train": {...}}``.
    :param feature_names: names of the model's input columns (empty for word2vec).
    :param task: ``binary``, ``regression``, ``multiclass`` or ``embedding``.
    :param out_dir: where the model was written.
    :param extra: framework-specific facts (rounds run, timings, prediction method).
    """

    framework: str
    model_files: list[str]
    params: dict[str, Any]
    library_versions: dict[str, str]
    best_iteration: int | None = None
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    feature_names: list[str] = field(default_factory=list)
    task: str = "binary"
    out_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: the in-memory model right after training (same predict path as :func:`load_predictor`)
    predictor: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything but the in-memory predictor."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "predictor"}


@runtime_checkable
class Predictor(Protocol):
    """A loaded model. ``predict`` takes a float32 ``(n, d)`` matrix in the training column order."""

    framework: str
    feature_names: list[str]
    task: str

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Scores: probability of class 1 (binary), the value (regression)."""
        ...

    def feature_importance(self) -> dict[str, float]:
        """Feature name -> importance (framework-specific measure, documented per trainer)."""
        ...


@runtime_checkable
class Trainer(Protocol):
    name: str

    def train(
        self,
        train: Dataset,
        valid: Dataset | None,
        params: Mapping[str, Any],
        out_dir: str | os.PathLike,
        log: LogFn = print,
    ) -> TrainResult: ...


def available_trainers() -> list[str]:
    return sorted(_TRAINERS)


def _load_object(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not attr:
        module, _, attr = spec.rpartition(".")
    try:
        mod = importlib.import_module(module)
        return getattr(mod, attr)
    except (ImportError, AttributeError) as exc:
        raise TrainerError(f"cannot load trainer {spec!r}: {exc}") from exc


def get_trainer(name: str) -> Trainer:
    """A trainer instance by framework name (or alias, or a dotted ``pkg.mod:Class`` path)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in _TRAINERS:
        return _load_object(_TRAINERS[key])()
    if ":" in name or "." in name:
        return _load_object(name)()
    raise TrainerError(f"unknown trainer {name!r}; available: {', '.join(available_trainers())}")


def library_versions(*names: str) -> dict[str, str]:
    out = {}
    for n in ("numpy", *names):
        try:
            out[n] = _md.version(n)
        except _md.PackageNotFoundError:
            continue
    return out


def write_metadata(out_dir: Path, result: TrainResult, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``metadata.json`` atomically (temp + rename)."""
    doc = {"format_version": METADATA_FORMAT_VERSION, **result.to_dict()}
    doc.pop("out_dir", None)
    if extra:
        doc.update(extra)
    payload = json.dumps(doc, indent=2, sort_keys=True, default=_json_default)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".metadata.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(payload)
    os.replace(tmp, out_dir / METADATA_FILE)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def read_metadata(model_dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(model_dir) / METADATA_FILE
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise TrainerError(f"{p}: no model metadata (is {model_dir} a trained model directory?)") from None
    except ValueError as exc:
        raise TrainerError(f"{p}: corrupt model metadata: {exc}") from None


def load_predictor(framework: str | None, model_dir: str | os.PathLike) -> Predictor:
    """Load the model in ``model_dir`` written by the ``framework`` trainer.

    ``framework=None`` takes it from ``metadata.json``; a mismatch with the metadata is an error.
    """
    meta = read_metadata(model_dir)
    recorded = meta.get("framework")
    if framework is None:
        framework = recorded
    key = _ALIASES.get(str(framework).lower(), str(framework).lower())
    if recorded and key != recorded:
        raise TrainerError(f"{model_dir}: model was trained with {recorded!r}, not {framework!r}")
    if key not in _TRAINERS:
        raise TrainerError(f"unknown framework {framework!r}; available: {', '.join(available_trainers())}")
    module = _TRAINERS[key].partition(":")[0]
    mod = importlib.import_module(module)
    return mod.load_predictor(Path(model_dir), meta)


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    p = Path(out_dir)
    p.mkdir(parents=True, exist_ok=True)
    return p


class ParamReader:
    """Reads typed params from a flat dict and reports unknown keys and bad values by name."""

    def __init__(self, framework: str, params: Mapping[str, Any] | None):
        self.framework = framework
        self.params = dict(params or {})
        self.used: set[str] = set()

    def get(
        self, key: str, default: Any = None, type_: Callable[[Any], Any] | None = None, aliases=()
    ) -> Any:
        for k in (key, *aliases):
            if k not in self.params:
                continue
            self.used.add(k)
            v = self.params[k]
            if v is not None:
                if type_ is None:
                    return v
                try:
                    if type_ is bool and isinstance(v, str):
                        low = v.strip().lower()
                        if low in ("true", "1", "yes", "on"):
                            return True
                        if low in ("false", "0", "no", "off", ""):
                            return False
                        raise ValueError(v)
                    return type_(v)
                except (TypeError, ValueError):
                    raise TrainerError(
                        f"{self.framework} param {k!r}: expected {getattr(type_, '__name__', type_)}, got {v!r}"
                    ) from None
        return default

    def unknown(self) -> list[str]:
        return sorted(k for k in self.params if k not in self.used)

    def reject_unknown(self, allowed_extra: tuple[str, ...] = ()) -> None:
        bad = [k for k in self.unknown() if k not in allowed_extra]
        if bad:
            raise TrainerError(f"{self.framework}: unknown param(s) {bad}")


def int_list(v: Any) -> list[int]:
    if isinstance(v, str):
        v = json.loads(v) if v.strip().startswith("[") else [x for x in v.split(",") if x.strip()]
    return [int(x) for x in v]


def infer_task(y: np.ndarray | None, declared: str | None) -> str:
    if declared:
        if declared not in ("binary", "regression"):
            raise TrainerError(f"task must be 'binary' or 'regression', got {declared!r}")
        return declared
    if y is None:
        raise TrainerError("training data has no label")
    u = np.unique(y[: min(len(y), 100_000)])
    return "binary" if np.all(np.isin(u, (0, 1))) else "regression"


def check_xy(ds: Dataset, what: str, need_label: bool = True) -> None:
    if ds.n_rows == 0:
        raise TrainerError(f"{what} data has no rows")
    if need_label and ds.y is None:
        raise TrainerError(f"{what} data has no label column")
    if ds.n_features == 0:
        raise TrainerError(f"{what} data has no feature columns")
