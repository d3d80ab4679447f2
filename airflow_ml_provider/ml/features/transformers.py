"""Transformers: the steps of a feature's chain, built-in and custom.

A transformer works on one *kind* of value and produces a kind:

* ``numeric``: batch form is a float64 :class:`numpy.ndarray` (NaN = missing), row form a
  Python ``float``;
* ``categorical``: batch form is a :class:`~.values.KeyColumn`, row form a key (``str`` or
  ``None``);
* ``list``: batch form is a :class:`ListColumn`, row form a ``list`` of keys;
* ``cross``: batch form is a list of :class:`~.values.KeyColumn`, row form a tuple of keys;
* outputs only: ``one_hot`` (batch: :class:`OneHotBlock`, row: column index or -1) and
  ``multi_hot`` (batch: :class:`MultiHotBlock`, row: list of column indexes).

Every transformer has a ``name`` and a ``version``; the fitted spec records both, and loading
refuses a fitted spec whose transformer version is not the installed one. Custom transformers
subclass :class:`NumericTransformer`, :class:`KeyTransformer` or :class:`Transformer` and are
registered through the entry-point group ``airflow_ml_provider.transformers`` or referenced from the
spec by dotted path ``package.module:Class`` (see docs/features.md).
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from .stats import DEFAULT_QUANTILE_CAP, ExactMoments, QuantileSample
from .values import (
    INF,
    NAN,
    KeyColumn,
    cross_hash,
    cross_hash_array,
    log1p_array,
    log1p_scalar,
    stable_hash,
    to_key,
)

NUMERIC = "numeric"
CATEGORICAL = "categorical"
LIST = "list"
CROSS = "cross"
ONE_HOT = "one_hot"
MULTI_HOT = "multi_hot"
#: Kinds a chain may end with.
OUTPUT_KINDS = (NUMERIC, ONE_HOT, MULTI_HOT)

_REQUIRED = object()


class OptionError(Exception):
    """Raised by option validation; the spec parser turns it into a FeatureSpecError."""

    def __init__(self, option: str | None, message: str) -> None:
        super().__init__(message)
        self.option = option
        self.message = message


@dataclass(frozen=True)
class Option:
    """One option of a transformer.

    ``type`` is one of ``number``, ``int``, ``bool``, ``str``, ``scalar`` (number or text),
    ``numbers`` (list of numbers), ``strings`` (list of categorical values).
    """

    type: str
    default: Any = None
    choices: tuple = ()
    min: float | None = None
    doc: str = ""
    required: bool = False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_NUMBER_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _yaml_number(v: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e12`` as text; accept such numeric text as a number."""
    if isinstance(v, str) and _NUMBER_TEXT.match(v.strip()):
        return float(v)
    return v


def validate_option(name: str, opt: Option, value: Any) -> Any:
    """Check and normalise one option value; raise :class:`OptionError`."""
    t = opt.type
    if t == "number":
        value = _yaml_number(value)
        if not _is_number(value) or not math.isfinite(value):
            raise OptionError(name, f"expected a finite number, got {value!r}")
        value = float(value)
    elif t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(name, f"expected an integer, got {value!r}")
    elif t == "bool":
        if not isinstance(value, bool):
            raise OptionError(name, f"expected true or false, got {value!r}")
    elif t == "str":
        if not isinstance(value, str):
            raise OptionError(name, f"expected text, got {value!r}")
    elif t == "scalar":
        if not (isinstance(value, str) or _is_number(value)):
            raise OptionError(name, f"expected a number or text, got {value!r}")
    elif t == "numbers":
        if isinstance(value, list):
            value = [_yaml_number(v) for v in value]
        if not isinstance(value, list) or not all(_is_number(v) and math.isfinite(v) for v in value):
            raise OptionError(name, f"expected a list of finite numbers, got {value!r}")
        value = [float(v) for v in value]
    elif t == "strings" and (
        not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value)
    ):
        raise OptionError(name, f"expected a list of values, got {value!r}")
    if opt.choices and value not in opt.choices:
        raise OptionError(name, f"expected one of {', '.join(map(str, opt.choices))}, got {value!r}")
    if opt.min is not None and _is_number(value) and value < opt.min:
        raise OptionError(name, f"must be at least {opt.min:g}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Batch output blocks and list columns
# ---------------------------------------------------------------------------------------------


class OneHotBlock:
    """Batch output of a one-hot transformer: per row the hot column (``-1`` = none)."""

    __slots__ = ("idx",)

    def __init__(self, idx: np.ndarray) -> None:
        self.idx = idx


class MultiHotBlock:
    """Batch output of a multi-hot transformer: the (row, column) pairs that are 1."""

    __slots__ = ("cols", "rows")

    def __init__(self, rows: np.ndarray, cols: np.ndarray) -> None:
        self.rows = rows
        self.cols = cols


class ListColumn:
    """A list column in batch form: every element as a :class:`KeyColumn` plus its row number."""

    __slots__ = ("elements", "n_rows", "rows")

    def __init__(self, n_rows: int, rows: np.ndarray, elements: KeyColumn) -> None:
        self.n_rows = n_rows
        self.rows = rows
        self.elements = elements

    def __len__(self) -> int:
        return self.n_rows


def _concat_keys(parts: list[KeyColumn]) -> KeyColumn:
    position: dict = {}
    codes = []
    for kc in parts:
        remap = np.fromiter((position.setdefault(k, len(position)) for k in kc.keys), dtype=np.intp,
                            count=len(kc.keys))
        codes.append(remap[kc.codes] if len(kc.codes) else np.zeros(0, dtype=np.intp))
    return KeyColumn(list(position), np.concatenate(codes) if codes else np.zeros(0, dtype=np.intp))


def concat_batches(parts: list, kind: str) -> Any:
    """Join batch forms of one input kind (the default streamed fit of a custom transformer)."""
    if kind == NUMERIC:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
    if kind == CATEGORICAL:
        return _concat_keys(parts)
    if kind == CROSS:
        return [_concat_keys(list(cols)) for cols in zip(*parts)] if parts else []
    offsets = np.cumsum([0] + [p.n_rows for p in parts])
    rows = [p.rows + off for p, off in zip(parts, offsets)]
    return ListColumn(
        int(offsets[-1]),
        np.concatenate(rows) if rows else np.zeros(0, dtype=np.intp),
        _concat_keys([p.elements for p in parts]),
    )


# ---------------------------------------------------------------------------------------------
# Base classes
# ---------------------------------------------------------------------------------------------


class Transformer:
    """Base class of every transformer.

    Class attributes a subclass sets: ``name``, ``version``, ``input_kinds``, ``options`` (a
    dict of :class:`Option`) and ``description``. Instances are created per feature with
    validated options in ``self.opts``; ``fit`` learns the state, ``get_state``/``set_state``
    save and restore it as JSON-compatible data.
    """

    name: ClassVar[str] = ""
    version: ClassVar[int | str] = 1
    input_kinds: ClassVar[tuple[str, ...]] = (NUMERIC,)
    options: ClassVar[dict[str, Option]] = {}
    description: ClassVar[str] = ""

    def __init__(self, feature: str, input_kind: str, opts: dict[str, Any]) -> None:
        self.feature = feature
        self.input_kind = input_kind
        self.opts = opts
        self.check()

    # -- configuration ------------------------------------------------------------------------
    def check(self) -> None:
        """Validate the combination of options; raise :class:`OptionError`."""

    @property
    def output_kind(self) -> str:
        return self.input_kind

    # -- state --------------------------------------------------------------------------------
    def fit(self, values: Any) -> None:
        """Learn the state from the batch form of the input."""

    # -- streamed fit (see docs/features.md, "Streamed preprocessing") ---------------------------
    def needs_fit(self) -> bool:
        """Whether the state depends on the data (False: no pass over the data is needed)."""
        return type(self).fit is not Transformer.fit

    def begin_fit(self, quantile_cap: int | None = DEFAULT_QUANTILE_CAP) -> None:
        """Start a streamed fit: :meth:`partial_fit` per batch, then :meth:`finish_fit`.

        The built-in transformers accumulate mergeable statistics (:mod:`.stats`) and end with the
        very state :meth:`fit` learns from all the rows at once. This default, for a custom
        transformer that only implements :meth:`fit`, keeps the batches and calls :meth:`fit` on
        them joined, so its memory grows with the rows; override the three methods to stream.
        """
        self._fit_batches: list = []

    def partial_fit(self, values: Any) -> None:
        """Accumulate one batch (the batch form of the input)."""
        self._fit_batches.append(values)

    def finish_fit(self) -> None:
        """Set the state from what :meth:`partial_fit` accumulated."""
        batches = self.__dict__.pop("_fit_batches", [])
        if batches or self.needs_fit():
            self.fit(concat_batches(batches, self.input_kind))

    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass

    # -- output -------------------------------------------------------------------------------
    def width(self) -> int:
        """Number of output columns (for ``one_hot`` / ``multi_hot`` outputs)."""
        return 1

    def output_names(self) -> list[str]:
        return [self.feature]

    # -- transform ----------------------------------------------------------------------------
    def transform_batch(self, values: Any) -> Any:
        raise NotImplementedError

    def transform_value(self, value: Any) -> Any:
        raise NotImplementedError

    def row_code(self, x: str, const) -> list[str] | None:
        """Optional: source lines doing exactly ``x = self.transform_value(x)`` inline.

        ``const(value)`` returns an expression for a constant. Return None (the default) to have
        the row path call :meth:`transform_value`.
        """
        return None


class NumericTransformer(Transformer):
    """A numeric -> numeric step.

    Implement ``transform_batch(x: float64 array) -> float64 array`` and
    ``transform_value(x: float) -> float`` with the *same* float64 operations in the same
    order (``+ - * /`` and comparisons are bit-identical in numpy and Python; library
    functions like ``np.log`` are not guaranteed to be). If only ``transform_batch`` is
    given, the row path calls it on a one-element array.
    """

    input_kinds = (NUMERIC,)

    def transform_value(self, value: float) -> float:
        return float(self.transform_batch(np.array([value], dtype=np.float64))[0])


class KeyTransformer(Transformer):
    """A categorical -> categorical step: implement ``map_key(key) -> key`` (``None`` = missing).

    The batch path applies ``map_key`` to each distinct key, so both paths agree by construction.
    """

    input_kinds = (CATEGORICAL,)

    def map_key(self, key: str | None) -> str | None:
        raise NotImplementedError

    def transform_batch(self, values: KeyColumn) -> KeyColumn:
        return values.map_keys(self.map_key)

    def transform_value(self, value: str | None) -> str | None:
        return self.map_key(value)


class _IndexOutput(Transformer):
    """A terminal categorical step mapping each key to a bucket: ``index`` or ``one_hot`` output."""

    input_kinds = (CATEGORICAL,)

    @property
    def output_kind(self) -> str:
        return ONE_HOT if self.opts.get("output") == "one_hot" else NUMERIC

    def key_index(self, key: str | None) -> int:
        raise NotImplementedError

    def bucket_names(self) -> list[str]:
        raise NotImplementedError

    def width(self) -> int:
        return len(self.bucket_names()) if self.output_kind == ONE_HOT else 1

    def output_names(self) -> list[str]:
        if self.output_kind == ONE_HOT:
            return [f"{self.feature}={b}" for b in self.bucket_names()]
        return [self.feature]

    def transform_batch(self, values: KeyColumn) -> Any:
        per_key = [self.key_index(k) for k in values.keys]
        if self.output_kind == ONE_HOT:
            return OneHotBlock(values.gather(per_key, np.int64))
        return values.gather(per_key, np.float64)

    def transform_value(self, value: str | None) -> Any:
        i = self.key_index(value)
        return i if self.output_kind == ONE_HOT else float(i)

    def row_code(self, x: str, const) -> list[str] | None:
        lines = [f"{x} = {const(self.key_index)}({x})"]
        if self.output_kind != ONE_HOT:
            lines.append(f"{x} = float({x})")
        return lines


# ---------------------------------------------------------------------------------------------
# Built-in transformers
# ---------------------------------------------------------------------------------------------


def _finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def _fit_whole(t: Transformer, values: Any) -> None:
    """The in-memory fit of a built-in: its streamed fit over one batch, every value kept for quantiles."""
    t.begin_fit(quantile_cap=None)
    t.partial_fit(values)
    t.finish_fit()


def _merge_counts(total: dict[str, int], counts: dict[str, int]) -> None:
    for k, n in counts.items():
        total[k] = total.get(k, 0) + n


class FillMissing(Transformer):
    name = "fill_missing"
    version = 1
    input_kinds = (NUMERIC, CATEGORICAL)
    description = "Replace a missing value (None, NaN, empty text) by a constant or a fitted statistic."
    options: ClassVar[dict[str, Option]] = {
        "value": Option("scalar", doc="the constant (strategy constant)"),
        "strategy": Option(
            "str",
            default="constant",
            choices=("constant", "mean", "median", "most_frequent"),
            doc="constant; mean or median (numeric); most_frequent (categorical)",
        ),
    }

    def check(self) -> None:
        strategy = self.opts["strategy"]
        value = self.opts.get("value")
        if strategy == "constant":
            if value is None:
                raise OptionError("value", "is required with strategy constant")
        elif value is not None:
            raise OptionError("value", f"is only used with strategy constant, not {strategy}")
        if strategy in ("mean", "median") and self.input_kind != NUMERIC:
            raise OptionError("strategy", f"{strategy} needs a numeric input")
        if strategy == "most_frequent" and self.input_kind != CATEGORICAL:
            raise OptionError("strategy", "most_frequent needs a categorical input")
        self._fill = None
        if strategy == "constant":
            if self.input_kind == NUMERIC:
                value = _yaml_number(value)
                if not _is_number(value):
                    raise OptionError("value", f"must be a number for a numeric feature, got {value!r}")
                self._fill = float(value)
            else:
                self._fill = to_key(value, self.feature)  # the same key a value in the data would get
                if self._fill is None:
                    raise OptionError("value", "must not be empty (an empty value is a missing one)")

    def fit(self, values: Any) -> None:
        _fit_whole(self, values)

    def needs_fit(self) -> bool:
        return self.opts["strategy"] != "constant"

    def begin_fit(self, quantile_cap: int | None = DEFAULT_QUANTILE_CAP) -> None:
        strategy = self.opts["strategy"]
        self._acc = (
            ExactMoments(squares=False) if strategy == "mean"
            else QuantileSample(quantile_cap) if strategy == "median"
            else {} if strategy == "most_frequent"
            else None
        )

    def partial_fit(self, values: Any) -> None:
        strategy = self.opts["strategy"]
        if strategy in ("mean", "median"):
            self._acc.update(_finite(values))
        elif strategy == "most_frequent":
            _merge_counts(self._acc, values.counts())

    def finish_fit(self) -> None:
        strategy, acc = self.opts["strategy"], self.__dict__.pop("_acc", None)
        if strategy == "mean":
            self._fill = acc.mean() if acc.n else 0.0  # the exact mean: finite whenever the values are
        elif strategy == "median":
            self._fill = acc.median() if acc.n else 0.0
        elif strategy == "most_frequent":
            self._fill = min(acc.items(), key=lambda kv: (-kv[1], kv[0]))[0] if acc else None

    def get_state(self) -> dict:
        return {"value": self._fill}

    def set_state(self, state: dict) -> None:
        self._fill = state["value"]

    def transform_batch(self, values: Any) -> Any:
        fill = self._fill
        if self.input_kind == NUMERIC:
            return np.where(np.isnan(values), fill, values)
        return values.map_keys(lambda k: fill if k is None else k)

    def transform_value(self, value: Any) -> Any:
        if self.input_kind == NUMERIC:
            return self._fill if value != value else value  # noqa: PLR0124 - NaN test
        return self._fill if value is None else value

    def row_code(self, x: str, const) -> list[str]:
        if self.input_kind == NUMERIC:
            return [f"if {x} != {x}: {x} = {const(self._fill)}"]
        return [f"if {x} is None: {x} = {const(self._fill)}"]


class Clip(NumericTransformer):
    name = "clip"
    version = 1
    description = "Limit a number to [min, max] (either bound may be left out). NaN stays NaN."
    options: ClassVar[dict[str, Option]] = {
        "min": Option("number", doc="lower bound"),
        "max": Option("number", doc="upper bound"),
    }

    def check(self) -> None:
        lo, hi = self.opts.get("min"), self.opts.get("max")
        if lo is None and hi is None:
            raise OptionError(None, "clip needs min, max or both")
        if lo is not None and hi is not None and lo > hi:
            raise OptionError("min", f"min {lo:g} is greater than max {hi:g}")
        self._lo = -INF if lo is None else lo
        self._hi = INF if hi is None else hi

    def transform_batch(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self._lo, self._hi
        return np.where(x < lo, lo, np.where(x > hi, hi, x))

    def transform_value(self, x: float) -> float:
        if x < self._lo:
            return self._lo
        if x > self._hi:
            return self._hi
        return x

    def row_code(self, x: str, const) -> list[str]:
        lo, hi = const(self._lo), const(self._hi)
        return [f"if {x} < {lo}: {x} = {lo}", f"elif {x} > {hi}: {x} = {hi}"]


class Log1p(NumericTransformer):
    name = "log1p"
    version = 1
    description = "log(1 + x); -1 gives -inf, below -1 gives NaN (clip first if the data can be negative)."

    def transform_batch(self, x: np.ndarray) -> np.ndarray:
        return log1p_array(x)

    def transform_value(self, x: float) -> float:
        return log1p_scalar(x)

    def row_code(self, x: str, const) -> list[str]:
        return [f"{x} = {const(log1p_scalar)}({x})"]


class Standardize(NumericTransformer):
    name = "standardize"
    version = 1
    description = "(x - mean) / std with the mean and population std fitted on the finite training values."
    options: ClassVar[dict[str, Option]] = {
        "with_mean": Option("bool", default=True, doc="subtract the mean"),
        "with_std": Option("bool", default=True, doc="divide by the standard deviation"),
        "mean": Option("number", doc="fixed mean instead of a fitted one"),
        "std": Option("number", min=0, doc="fixed standard deviation instead of a fitted one"),
    }

    def check(self) -> None:
        if self.opts.get("std") == 0:
            raise OptionError("std", "must not be 0")
        self._mean = None
        self._std = None

    def fit(self, x: np.ndarray) -> None:
        _fit_whole(self, x)

    def needs_fit(self) -> bool:
        o = self.opts
        return (o["with_mean"] and o.get("mean") is None) or (o["with_std"] and o.get("std") is None)

    def begin_fit(self, quantile_cap: int | None = DEFAULT_QUANTILE_CAP) -> None:
        o = self.opts
        self._acc = ExactMoments(squares=o["with_std"] and o.get("std") is None) if self.needs_fit() else None

    def partial_fit(self, x: np.ndarray) -> None:
        if self._acc is not None:
            self._acc.update(_finite(x))

    def finish_fit(self) -> None:
        acc = self.__dict__.pop("_acc", None)
        # exact statistics (stats.ExactMoments): the correctly rounded mean and population std
        if acc is not None and acc.n:
            mean, std = acc.mean(), (acc.std() if acc.squares else 1.0)
        else:
            mean, std = 0.0, 1.0
        if self.opts.get("mean") is not None:
            mean = self.opts["mean"]
        if self.opts.get("std") is not None:
            std = self.opts["std"]
        if not self.opts["with_mean"] or not math.isfinite(mean):
            mean = 0.0
        if not self.opts["with_std"] or not std > 0 or not math.isfinite(std):
            std = 1.0
        self._mean, self._std = mean, std

    def get_state(self) -> dict:
        return {"mean": self._mean, "std": self._std}

    def set_state(self, state: dict) -> None:
        self._mean, self._std = float(state["mean"]), float(state["std"])

    def transform_batch(self, x: np.ndarray) -> np.ndarray:
        return (x - self._mean) / self._std

    def transform_value(self, x: float) -> float:
        return (x - self._mean) / self._std

    def row_code(self, x: str, const) -> list[str]:
        return [f"{x} = ({x} - {const(self._mean)}) / {const(self._std)}"]


class MinMax(NumericTransformer):
    name = "min_max"
    version = 1
    description = "(x - min) / (max - min) with min and max fitted on the finite training values."
    options: ClassVar[dict[str, Option]] = {
        "min": Option("number", doc="fixed minimum instead of a fitted one"),
        "max": Option("number", doc="fixed maximum instead of a fitted one"),
    }

    def check(self) -> None:
        lo, hi = self.opts.get("min"), self.opts.get("max")
        if lo is not None and hi is not None and lo >= hi:
            raise OptionError("min", f"min {lo:g} must be less than max {hi:g}")
        self._min = None
        self._range = None

    def fit(self, x: np.ndarray) -> None:
        _fit_whole(self, x)

    def needs_fit(self) -> bool:
        return self.opts.get("min") is None or self.opts.get("max") is None

    def begin_fit(self, quantile_cap: int | None = DEFAULT_QUANTILE_CAP) -> None:
        self._acc = [math.inf, -math.inf, 0]

    def partial_fit(self, x: np.ndarray) -> None:
        f = _finite(x)
        if len(f):
            acc = self._acc
            acc[0] = min(acc[0], float(np.min(f)))
            acc[1] = max(acc[1], float(np.max(f)))
            acc[2] += len(f)

    def finish_fit(self) -> None:
        acc = self.__dict__.pop("_acc", None) or [math.inf, -math.inf, 0]
        lo, hi = (acc[0], acc[1]) if acc[2] else (0.0, 1.0)
        if self.opts.get("min") is not None:
            lo = self.opts["min"]
        if self.opts.get("max") is not None:
            hi = self.opts["max"]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            lo, hi = 0.0, 1.0
        rng = hi - lo
        if not rng > 0 or not math.isfinite(rng):
            rng = 1.0
        self._min, self._range = lo, rng

    def get_state(self) -> dict:
        return {"min": self._min, "range": self._range}

    def set_state(self, state: dict) -> None:
        self._min, self._range = float(state["min"]), float(state["range"])

    def transform_batch(self, x: np.ndarray) -> np.ndarray:
        return (x - self._min) / self._range

    def transform_value(self, x: float) -> float:
        return (x - self._min) / self._range

    def row_code(self, x: str, const) -> list[str]:
        return [f"{x} = ({x} - {const(self._min)}) / {const(self._range)}"]


class Bucketize(Transformer):
    name = "bucketize"
    version = 1
    input_kinds = (NUMERIC,)
    description = (
        "Bucket number: edges e0 < e1 < ... give bucket i for e(i-1) <= x < e(i); fixed edges or "
        "num_buckets fitted quantiles. Missing gives NaN (index) or no hot column (one_hot)."
    )
    options: ClassVar[dict[str, Option]] = {
        "edges": Option("numbers", doc="fixed, strictly increasing bucket edges"),
        "num_buckets": Option("int", min=2, doc="fit this many quantile buckets instead"),
        "output": Option("str", default="index", choices=("index", "one_hot"), doc="index or one_hot"),
    }

    def check(self) -> None:
        edges, num = self.opts.get("edges"), self.opts.get("num_buckets")
        if (edges is None) == (num is None):
            raise OptionError(None, "bucketize needs exactly one of edges or num_buckets")
        if edges is not None:
            if not edges:
                raise OptionError("edges", "must not be empty")
            if any(b <= a for a, b in itertools.pairwise(edges)):
                raise OptionError("edges", f"must be strictly increasing, got {edges}")
        self._edges = list(edges) if edges is not None else None

    @property
    def output_kind(self) -> str:
        return ONE_HOT if self.opts["output"] == "one_hot" else NUMERIC

    def fit(self, x: np.ndarray) -> None:
        _fit_whole(self, x)

    def needs_fit(self) -> bool:
        return self.opts.get("edges") is None

    def begin_fit(self, quantile_cap: int | None = DEFAULT_QUANTILE_CAP) -> None:
        self._acc = QuantileSample(quantile_cap) if self.needs_fit() else None

    def partial_fit(self, x: np.ndarray) -> None:
        if self._acc is not None:
            self._acc.update(_finite(x))

    def finish_fit(self) -> None:
        acc = self.__dict__.pop("_acc", None)
        if acc is None:
            return
        num = self.opts["num_buckets"]
        if acc.n:
            qs = acc.quantiles([i / num for i in range(1, num)])  # exact up to the cap (stats.py)
            edges = sorted({float(q) for q in qs if math.isfinite(q)})
        else:
            edges = [0.0]
        self._edges = edges or [0.0]

    def get_state(self) -> dict:
        return {"edges": self._edges}

    def set_state(self, state: dict) -> None:
        self._edges = [float(e) for e in state["edges"]]

    def width(self) -> int:
        return len(self._edges) + 1 if self.output_kind == ONE_HOT else 1

    def output_names(self) -> list[str]:
        if self.output_kind != ONE_HOT:
            return [self.feature]
        e = self._edges
        names = [f"{self.feature}=[-inf,{e[0]!r})"]
        names += [f"{self.feature}=[{a!r},{b!r})" for a, b in itertools.pairwise(e)]
        names.append(f"{self.feature}=[{e[-1]!r},inf]")
        return names

    def transform_batch(self, x: np.ndarray) -> Any:
        idx = np.searchsorted(np.asarray(self._edges, dtype=np.float64), x, side="right")
        missing = np.isnan(x)
        if self.output_kind == ONE_HOT:
            idx = idx.astype(np.int64)
            idx[missing] = -1
            return OneHotBlock(idx)
        out = idx.astype(np.float64)
        out[missing] = NAN
        return out

    def transform_value(self, x: float) -> Any:
        if x != x:  # noqa: PLR0124 - NaN test
            return -1 if self.output_kind == ONE_HOT else NAN
        i = bisect.bisect_right(self._edges, x)
        return i if self.output_kind == ONE_HOT else float(i)

    def row_code(self, x: str, const) -> list[str]:
        find = f"{const(bisect.bisect_right)}({const(self._edges)}, {x})"
        if self.output_kind == ONE_HOT:
            return [f"{x} = -1 if {x} != {x} else {find}"]
        return [f"{x} = {const(NAN)} if {x} != {x} else float({find})"]


class Vocabulary(_IndexOutput):
    name = "vocabulary"
    version = 1
    description = (
        "Look a category up in a vocabulary fitted on the training data (most frequent first, "
        "then by value), keeping top_k values seen at least min_frequency times; unseen and missing "
        "values go to oov_buckets out-of-vocabulary buckets (by stable hash). Output: the index "
        "(OOV buckets first, then the vocabulary) or a one-hot vector."
    )
    options: ClassVar[dict[str, Option]] = {
        "top_k": Option("int", min=1, doc="keep at most this many values"),
        "min_frequency": Option("int", default=1, min=1, doc="drop values seen fewer times"),
        "oov_buckets": Option("int", default=1, min=1, doc="buckets for unseen and missing values"),
        "values": Option("strings", doc="a fixed vocabulary instead of a fitted one"),
        "output": Option("str", default="index", choices=("index", "one_hot"), doc="index or one_hot"),
    }

    def check(self) -> None:
        self._vocab: list[str] | None = None
        self._lookup: dict[str, int] = {}
        fixed = self.opts.get("values")
        if fixed is not None:
            keys = [to_key(v, self.feature) for v in fixed]
            if any(k is None for k in keys):
                raise OptionError("values", "must not contain empty values")
            if len(set(keys)) != len(keys):
                raise OptionError("values", "contains duplicates")
            self._set_vocab(keys)

    def _set_vocab(self, vocab: list[str]) -> None:
        self._vocab = list(vocab)
        n_oov = self.opts["oov_buckets"]
        self._lookup = {k: i + n_oov for i, k in enumerate(self._vocab)}

    def fit(self, values: KeyColumn) -> None:
        _fit_whole(self, values)

    def needs_fit(self) -> bool:
        return self.opts.get("values") is None

    def begin_fit(self, quantile_cap: int | None = DEFAULT_QUANTILE_CAP) -> None:
        self._acc: dict[str, int] = {}

    def partial_fit(self, values: KeyColumn) -> None:
        if self.needs_fit():
            _merge_counts(self._acc, values.counts())

    def finish_fit(self) -> None:
        counts = self.__dict__.pop("_acc", {})
        if self.needs_fit():
            self._set_vocab(fit_vocabulary(counts, self.opts.get("top_k"), self.opts["min_frequency"]))

    def get_state(self) -> dict:
        return {"vocabulary": self._vocab}

    def set_state(self, state: dict) -> None:
        self._set_vocab([str(k) for k in state["vocabulary"]])

    def bucket_names(self) -> list[str]:
        n_oov = self.opts["oov_buckets"]
        oov = ["<oov>"] if n_oov == 1 else [f"<oov{i}>" for i in range(n_oov)]
        return oov + list(self._vocab or [])

    def key_index(self, key: str | None) -> int:
        i = self._lookup.get(key)
        if i is not None:
            return i
        n_oov = self.opts["oov_buckets"]
        if n_oov == 1 or key is None:
            return 0
        return stable_hash(key) % n_oov

    def row_code(self, x: str, const) -> list[str]:
        lines = [
            f"_i = {const(self._lookup)}.get({x})",
            f"{x} = _i if _i is not None else {const(self.key_index)}({x})",
        ]
        if self.output_kind != ONE_HOT:
            lines.append(f"{x} = float({x})")
        return lines


class OneHot(Vocabulary):
    name = "one_hot"
    version = 1
    description = "The vocabulary transformer with one-hot output by default."
    options: ClassVar[dict[str, Option]] = dict(Vocabulary.options)
    options["output"] = Option("str", default="one_hot", choices=("index", "one_hot"), doc="index or one_hot")


def fit_vocabulary(counts: dict[str, int], top_k: int | None, min_frequency: int) -> list[str]:
    """Values seen at least ``min_frequency`` times, most frequent first (ties by value), top ``top_k``."""
    keys = sorted(k for k, n in counts.items() if n >= min_frequency)  # by value ...
    keys.sort(key=counts.__getitem__, reverse=True)  # ... then by count, stable: ties stay by value
    return keys if top_k is None else keys[:top_k]


class HashBucket(_IndexOutput):
    name = "hash_bucket"
    version = 1
    description = "stable_hash(value) mod buckets (BLAKE2b, the same everywhere; missing has its own hash)."
    options: ClassVar[dict[str, Option]] = {
        "buckets": Option("int", required=True, min=1, doc="number of buckets"),
        "output": Option("str", default="index", choices=("index", "one_hot"), doc="index or one_hot"),
    }

    def bucket_names(self) -> list[str]:
        return [f"#{i}" for i in range(self.opts["buckets"])]

    def key_index(self, key: str | None) -> int:
        return stable_hash(key) % self.opts["buckets"]


class HashedCross(Transformer):
    name = "hashed_cross"
    version = 1
    input_kinds = (CROSS,)
    description = (
        "Cross two or more input columns: combine the stable hashes of their values (order matters) "
        "and take it mod buckets."
    )
    options: ClassVar[dict[str, Option]] = {
        "buckets": Option("int", required=True, min=1, doc="number of buckets"),
        "output": Option("str", default="index", choices=("index", "one_hot"), doc="index or one_hot"),
    }

    @property
    def output_kind(self) -> str:
        return ONE_HOT if self.opts["output"] == "one_hot" else NUMERIC

    def width(self) -> int:
        return self.opts["buckets"] if self.output_kind == ONE_HOT else 1

    def output_names(self) -> list[str]:
        if self.output_kind == ONE_HOT:
            return [f"{self.feature}=#{i}" for i in range(self.opts["buckets"])]
        return [self.feature]

    def transform_batch(self, columns: list[KeyColumn]) -> Any:
        hashes = [
            np.fromiter((stable_hash(k) for k in col.keys), dtype=np.uint64, count=len(col.keys))[col.codes]
            for col in columns
        ]
        idx = cross_hash_array(hashes) % np.uint64(self.opts["buckets"])
        if self.output_kind == ONE_HOT:
            return OneHotBlock(idx.astype(np.int64))
        return idx.astype(np.float64)

    def transform_value(self, keys: tuple) -> Any:
        i = cross_hash([stable_hash(k) for k in keys]) % self.opts["buckets"]
        return i if self.output_kind == ONE_HOT else float(i)

    def row_code(self, x: str, const) -> list[str]:
        buckets = self.opts["buckets"]

        @lru_cache(maxsize=1 << 16)
        def bucket_of(keys: tuple) -> int:  # a pure function of the keys: cache hot pairs
            return cross_hash([stable_hash(k) for k in keys]) % buckets

        lines = [f"{x} = {const(bucket_of)}({x})"]
        if self.output_kind != ONE_HOT:
            lines.append(f"{x} = float({x})")
        return lines


class MultiHot(Transformer):
    name = "multi_hot"
    version = 1
    input_kinds = (LIST,)
    description = (
        "For a list feature: one column per vocabulary value (fitted like vocabulary), 1 when the "
        "value is in the list; unseen values set an OOV column (oov_buckets, 0 = ignore them)."
    )
    options: ClassVar[dict[str, Option]] = {
        "top_k": Option("int", min=1, doc="keep at most this many values"),
        "min_frequency": Option("int", default=1, min=1, doc="drop values seen fewer times"),
        "oov_buckets": Option("int", default=1, min=0, doc="buckets for unseen values (0 = ignore)"),
        "values": Option("strings", doc="a fixed vocabulary instead of a fitted one"),
    }

    check = Vocabulary.check
    _set_vocab = Vocabulary._set_vocab

    @property
    def output_kind(self) -> str:
        return MULTI_HOT

    def fit(self, values: ListColumn) -> None:
        _fit_whole(self, values)

    needs_fit = Vocabulary.needs_fit
    begin_fit = Vocabulary.begin_fit
    finish_fit = Vocabulary.finish_fit

    def partial_fit(self, values: ListColumn) -> None:
        if self.needs_fit():
            _merge_counts(self._acc, values.elements.counts())

    def get_state(self) -> dict:
        return {"vocabulary": self._vocab}

    def set_state(self, state: dict) -> None:
        self._set_vocab([str(k) for k in state["vocabulary"]])

    def width(self) -> int:
        return self.opts["oov_buckets"] + len(self._vocab or [])

    def output_names(self) -> list[str]:
        n_oov = self.opts["oov_buckets"]
        oov = [] if n_oov == 0 else (["<oov>"] if n_oov == 1 else [f"<oov{i}>" for i in range(n_oov)])
        return [f"{self.feature}={b}" for b in oov + list(self._vocab or [])]

    def key_index(self, key: str) -> int:
        i = self._lookup.get(key)
        if i is not None:
            return i
        n_oov = self.opts["oov_buckets"]
        if n_oov == 0:
            return -1
        return 0 if n_oov == 1 else stable_hash(key) % n_oov

    def transform_batch(self, values: ListColumn) -> MultiHotBlock:
        per_key = np.asarray([self.key_index(k) for k in values.elements.keys], dtype=np.int64)
        cols = per_key[values.elements.codes] if len(per_key) else np.zeros(0, dtype=np.int64)
        keep = cols >= 0
        return MultiHotBlock(values.rows[keep], cols[keep])

    def transform_value(self, keys: list[str]) -> list[int]:
        out = []
        for k in keys:
            i = self.key_index(k)
            if i >= 0:
                out.append(i)
        return out


class Passthrough(NumericTransformer):
    name = "passthrough"
    version = 1
    description = "The number as it is (after parsing); missing stays NaN."

    def transform_batch(self, x: np.ndarray) -> np.ndarray:
        return x

    def transform_value(self, x: float) -> float:
        return x

    def row_code(self, x: str, const) -> list[str]:
        return []


class Lowercase(KeyTransformer):
    name = "lowercase"
    version = 1
    description = "Lower-case a category (str.lower, Unicode aware) so 'Rock' and 'rock' are one value."

    def map_key(self, key: str | None) -> str | None:
        return key.lower() if key is not None else None

    def row_code(self, x: str, const) -> list[str]:
        return [f"if {x} is not None: {x} = {x}.lower()"]


BUILTIN_TRANSFORMERS: dict[str, type[Transformer]] = {
    cls.name: cls
    for cls in (
        FillMissing,
        Clip,
        Log1p,
        Standardize,
        MinMax,
        Bucketize,
        Vocabulary,
        OneHot,
        HashBucket,
        HashedCross,
        MultiHot,
        Passthrough,
        Lowercase,
    )
}

__all__ = [
    "BUILTIN_TRANSFORMERS",
    "concat_batches",
    "CATEGORICAL",
    "CROSS",
    "LIST",
    "MULTI_HOT",
    "NUMERIC",
    "ONE_HOT",
    "KeyTransformer",
    "ListColumn",
    "MultiHotBlock",
    "NumericTransformer",
    "OneHotBlock",
    "Option",
    "OptionError",
    "Transformer",
]
