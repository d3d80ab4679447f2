"""Fitting a spec, the fitted spec (JSON) and the batch and row transforms.

``fit(spec, data)`` learns every transformer's state and returns a :class:`FittedSpec`:
config + state + format version + content hash. Training and serving both load it with
:meth:`FittedSpec.load`; ``transform`` (batch, vectorised over columns) and ``transform_row`` /
``transform_rows`` (online) give bit-identical float32 numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from .. import safejson
from .errors import FeatureError, FeatureSpecError, FeatureTypeError, MissingFeatureError
from .registry import TransformerLookupError, get_transformer_class
from .rowcode import compile_row_function
from .spec import FeatureDef, FeatureSpec
from .transformers import (
    BUILTIN_TRANSFORMERS,
    CATEGORICAL,
    CROSS,
    MULTI_HOT,
    NUMERIC,
    ONE_HOT,
    ListColumn,
    MultiHotBlock,
    OneHotBlock,
    Transformer,
)
from .values import F32_OVERFLOW, NAN, KeyColumn, to_float, to_key, to_key_list

FORMAT = "airflow-ml-provider/fitted-feature-spec"
FORMAT_VERSION = 1

#: Rows per block of the batch transform (fits the CPU cache with ~200 output columns).
_BLOCK_ROWS = 8192
_F32_ZERO = np.float32(0.0)
#: ``transform_rows`` takes the columnar path from this many rows up; below, the compiled row
#: function is faster (the columnar path's fixed cost -- a few numpy calls per feature -- is about
#: 40 rows' worth of row code on the example spec; both costs grow with the number of features).
COLUMNAR_MIN_ROWS = 40


def _finish_numeric(v: Any) -> np.ndarray:
    """Canonical NaN, and +-inf beyond float32's range (as the row path does), before the cast."""
    v = np.asarray(v, dtype=np.float64)
    nan = np.isnan(v)
    if nan.any():
        v = np.where(nan, NAN, v)
    big = np.abs(v) >= F32_OVERFLOW
    if big.any():
        v = np.where(big, np.copysign(np.inf, v), v)
    return v


def _write(blk: np.ndarray, flat: np.ndarray, comp: Any, v: Any, b0: int, b1: int, sliced: bool) -> None:
    """Write one feature's output for rows [b0, b1) into the output block (``flat`` is its 1-D view)."""
    off = comp.offset
    width = blk.shape[1]
    if comp.kind == NUMERIC:
        blk[:, off] = _finish_numeric(v if sliced else v[b0:b1])
    elif comp.kind == ONE_HOT:
        idx = v.idx if isinstance(v, OneHotBlock) else np.asarray(v)
        if not sliced:
            idx = idx[b0:b1]
        pos = np.arange(off, off + width * len(idx), width, dtype=np.int64)
        pos += idx
        hot = idx >= 0
        flat[pos[hot] if not hot.all() else pos] = 1.0
    else:
        if sliced:
            rows, cols = v.rows, v.cols
        else:
            s0, s1 = np.searchsorted(v.rows, [b0, b1])
            rows, cols = v.rows[s0:s1] - b0, v.cols[s0:s1]
        flat[np.asarray(rows, dtype=np.int64) * width + off + cols] = 1.0


# ---------------------------------------------------------------------------------------------
# Reading input columns in batch form
# ---------------------------------------------------------------------------------------------


def _columns_of(data: Any) -> list[str]:
    if hasattr(data, "column_names"):  # pyarrow.Table
        return list(data.column_names)
    if hasattr(data, "columns"):
        return [str(c) for c in data.columns]
    return list(data.keys())


def _get_column(data: Any, column: str, feature: str):
    """The column as a pandas Series; MissingFeatureError naming it if absent."""
    import pandas as pd

    present = _columns_of(data)
    if column not in present:
        shown = ", ".join(map(repr, present[:20])) + (", ..." if len(present) > 20 else "")
        raise MissingFeatureError(
            f"input column {column!r} (feature {feature!r}) is missing from the data; columns present: "
            f"{shown or 'none'}",
            feature=feature,
            column=column,
        )
    if hasattr(data, "column_names"):  # pyarrow.Table
        return data.column(column).to_pandas()
    col = data[column]
    if isinstance(col, pd.DataFrame):
        raise FeatureError(
            f"input column {column!r} (feature {feature!r}) appears more than once", feature=feature
        )
    if not isinstance(col, pd.Series):
        col = pd.Series(col)
    return col


def _n_rows(data: Any) -> int:
    if hasattr(data, "num_rows"):
        return int(data.num_rows)
    return len(data)


def _numeric_batch(series, feature: str) -> np.ndarray:
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
        return series.to_numpy(dtype=np.float64)
    if not isinstance(dtype, np.dtype) and getattr(dtype, "kind", "O") in "fiub":
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if isinstance(dtype, np.dtype) and dtype.kind == "O":
        # mixed Python objects: convert each value with the row path's own function (factorize
        # would merge values that compare equal but convert differently, e.g. 0.0 and -0.0)
        values = series.tolist()
        return np.fromiter((to_float(v, feature) for v in values), dtype=np.float64, count=len(values))
    # text or categorical: convert each distinct value with the row path's function
    try:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
    except TypeError as exc:
        raise FeatureTypeError(
            f"feature {feature!r}: values are not numbers ({exc})", feature=feature
        ) from None
    per = np.fromiter((to_float(u, feature) for u in _as_list(uniques)), dtype=np.float64, count=len(uniques))
    per = np.append(per, NAN)
    codes = np.where(codes < 0, len(uniques), codes)
    return per[codes]


def _as_list(uniques) -> list:
    if hasattr(uniques, "tolist"):
        return uniques.tolist()
    return list(uniques)


def _arrow_dictionary(series):
    """(codes, uniques) of an Arrow-backed column via pyarrow's dictionary_encode, or None."""
    dtype = series.dtype
    if "pyarrow" not in str(getattr(dtype, "storage", "")) and "[pyarrow]" not in str(dtype):
        return None
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = series.array.__arrow_array__()
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        enc = pc.dictionary_encode(arr)
        uniques = enc.dictionary.to_pylist()
        codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
        return codes, uniques
    except Exception:  # noqa: BLE001 - fall back to pandas
        return None


def _key_batch(series, feature: str) -> KeyColumn:
    import pandas as pd

    enc = _arrow_dictionary(series)
    if enc is not None:
        codes, uniques = enc
    elif isinstance(series.dtype, np.dtype) and series.dtype.kind == "O":
        # mixed Python objects: key each value first (factorize would merge True and 1)
        keys_per_row = [to_key(v, feature) for v in series.tolist()]
        codes, uniques = pd.factorize(np.asarray(keys_per_row, dtype=object), use_na_sentinel=True)
        uniques = _as_list(uniques)
    else:
        try:
            codes, uniques = pd.factorize(series, use_na_sentinel=True)
        except TypeError as exc:
            raise FeatureTypeError(
                f"feature {feature!r}: values are not categorical (text or numbers) ({exc})", feature=feature
            ) from None
        uniques = _as_list(uniques)
    keys = [to_key(u, feature) for u in uniques]
    n = len(keys)
    keys.append(None)
    codes = codes.astype(np.intp, copy=False)
    if (codes < 0).any():
        codes = np.where(codes < 0, n, codes)
    return KeyColumn(keys, codes)


def _list_batch(series, feature: str, separator: str) -> ListColumn:
    import pandas as pd

    rows: list[int] = []
    elements: list[str] = []
    for r, v in enumerate(series.tolist()):
        keys = to_key_list(v, feature, separator)
        if keys:
            rows.extend([r] * len(keys))
            elements.extend(keys)
    if elements:
        codes, uniques = pd.factorize(np.asarray(elements, dtype=object))
        kc = KeyColumn(list(uniques), codes.astype(np.intp))
    else:
        kc = KeyColumn([], np.zeros(0, dtype=np.intp))
    return ListColumn(len(series), np.asarray(rows, dtype=np.intp), kc)


class _InputCache:
    """Converted input columns of one table, shared by the features (and by fit + transform)."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self._cache: dict[tuple, Any] = {}

    def numeric(self, column: str, feature: str) -> np.ndarray:
        key = ("numeric", column)
        if key not in self._cache:
            self._cache[key] = _numeric_batch(_get_column(self.data, column, feature), feature)
        return self._cache[key]

    def keys(self, column: str, feature: str) -> KeyColumn:
        key = ("keys", column)
        if key not in self._cache:
            self._cache[key] = _key_batch(_get_column(self.data, column, feature), feature)
        return self._cache[key]

    def lists(self, column: str, feature: str, separator: str) -> ListColumn:
        key = ("list", column, separator)
        if key not in self._cache:
            self._cache[key] = _list_batch(_get_column(self.data, column, feature), feature, separator)
        return self._cache[key]

    def input_for(self, fdef: FeatureDef) -> Any:
        if fdef.dtype == CROSS:
            return [self.keys(c, fdef.name) for c in fdef.columns]
        if fdef.dtype == NUMERIC:
            return self.numeric(fdef.column, fdef.name)
        if fdef.dtype == CATEGORICAL:
            return self.keys(fdef.column, fdef.name)
        return self.lists(fdef.column, fdef.name, fdef.separator)


# ---------------------------------------------------------------------------------------------
# Reading input columns from a list of row mappings (the columnar path of transform_rows)
# ---------------------------------------------------------------------------------------------

_ABSENT = object()
_INT_FLOAT = frozenset((int, float))
_NUMBER_OR_NONE = frozenset((int, float, type(None)))
_PLAIN_KEYS = frozenset((str, int, float, type(None)))


class _Fallback(Exception):
    """The columnar path declines these rows; the row path decides (result or the error to raise)."""


def _numeric_values(col: list | tuple, feature: str) -> np.ndarray:
    """A numeric input column as float64, each value converted exactly as the row path does.

    The row path takes a float as it is and converts everything else with :func:`to_float`; for an
    int that is ``float(v)`` (``OverflowError`` for a huge one -- the caller then falls back to the
    row path, which raises the proper :class:`FeatureTypeError`) and for ``None`` it is ``NAN``.
    tests/test_features_batch_rows.py checks ints near 2**53, 2**63, 2**64 and beyond.
    """
    kinds = set(map(type, col))
    # numpy converts a Python int as float() does (correctly rounded; OverflowError when too large)
    if kinds <= _INT_FLOAT:
        return np.array(col, dtype=np.float64)
    if kinds <= _NUMBER_OR_NONE:
        return np.array([NAN if v is None else v for v in col], dtype=np.float64)
    return np.array([v if type(v) is float else to_float(v, feature) for v in col], dtype=np.float64)


def _factorize(keys: list) -> KeyColumn:
    """Distinct keys (first-seen order) and per-row codes, as a :class:`KeyColumn`."""
    uniques = list(dict.fromkeys(keys))
    position = {k: i for i, k in enumerate(uniques)}
    return KeyColumn(uniques, np.fromiter(map(position.__getitem__, keys), dtype=np.intp, count=len(keys)))


def _key_values(col: list | tuple, feature: str) -> KeyColumn:
    """A categorical input column: :func:`to_key` of every value, as a :class:`KeyColumn`.

    A column of plain str, int, float and None is factorized on the raw values and each distinct
    value keyed once: two such values that compare equal (``3`` and ``3.0``, ``0`` and ``-0.0``)
    have the same key, so nothing is merged that the row path keeps apart (unlike ``True`` and
    ``1``: any other type is keyed value by value first).
    """
    if set(map(type, col)) <= _PLAIN_KEYS:
        kc = _factorize(col)
        kc.keys = [u if (type(u) is str and u) else to_key(u, feature) for u in kc.keys]
        return kc
    return _factorize([v if (type(v) is str and v) else to_key(v, feature) for v in col])


def _list_values(col: list | tuple, feature: str, separator: str) -> ListColumn:
    rows: list[int] = []
    elements: list[str] = []
    for r, v in enumerate(col):
        keys = to_key_list(v, feature, separator)
        if keys:
            rows.extend([r] * len(keys))
            elements.extend(keys)
    if elements:
        kc = _factorize(elements)
    else:
        kc = KeyColumn([], np.zeros(0, dtype=np.intp))
    return ListColumn(len(col), np.asarray(rows, dtype=np.intp), kc)


class _RowsInput:
    """The input columns of a list of row mappings, in the batch forms the transformers take.

    Every value goes through the row path's own conversion (:func:`to_float`, :func:`to_key`,
    :func:`to_key_list`); an absent key is a missing value, or :class:`_Fallback` for a feature
    whose ``on_missing`` is ``error`` (the row path then raises the error naming row and feature).
    """

    def __init__(self, rows: list, columns: list[str], policy: str) -> None:
        self.n = len(rows)
        self._policy = policy
        self._cache: dict[tuple, Any] = {}
        self._absent: set[str] = set()
        raw: dict[str, Any] = {}
        plain = set(map(type, rows)) == {dict}
        if not plain and not all(isinstance(r, Mapping) for r in rows):
            raise _Fallback("a row is not a mapping")  # the row path raises naming it
        if columns and plain:
            try:  # every key present (the usual request): one C-level pass per row, one transpose
                if len(columns) == 1:
                    raw[columns[0]] = [r[columns[0]] for r in rows]
                else:
                    raw = dict(zip(columns, zip(*map(itemgetter(*columns), rows))))
            except KeyError:
                raw = {}
        if not raw and columns:
            for c in columns:
                col = [r.get(c, _ABSENT) for r in rows]
                if any(v is _ABSENT for v in col):
                    self._absent.add(c)
                    col = [None if v is _ABSENT else v for v in col]
                raw[c] = col
        self._raw = raw

    def _column(self, column: str, fdef: FeatureDef) -> Any:
        if column in self._absent and (fdef.on_missing or self._policy) == "error":
            raise _Fallback(f"absent {column!r} (feature {fdef.name!r}, on_missing: error)")
        return self._raw[column]

    def input_for(self, fdef: FeatureDef) -> Any:
        name = fdef.name
        if fdef.dtype == CROSS:
            return [self._keys(c, fdef) for c in fdef.columns]
        column = fdef.column
        if fdef.dtype == NUMERIC:
            key = ("numeric", column)
            if key not in self._cache:
                self._cache[key] = _numeric_values(self._column(column, fdef), name)
            else:
                self._column(column, fdef)
            return self._cache[key]
        if fdef.dtype == CATEGORICAL:
            return self._keys(column, fdef)
        key = ("list", column, fdef.separator)
        if key not in self._cache:
            self._cache[key] = _list_values(self._column(column, fdef), name, fdef.separator)
        else:
            self._column(column, fdef)
        return self._cache[key]

    def _keys(self, column: str, fdef: FeatureDef) -> KeyColumn:
        raw = self._column(column, fdef)
        key = ("keys", column)
        if key not in self._cache:
            self._cache[key] = _key_values(raw, fdef.name)
        return self._cache[key]


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def fit(spec: FeatureSpec, data: Any) -> FittedSpec:
    """Learn every transformer's state from ``data`` (pandas DataFrame or pyarrow Table)."""
    return _fit(spec, data, _InputCache(data))


def fit_transform(spec: FeatureSpec, data: Any, *, sparse: bool = False) -> tuple[FittedSpec, Any]:
    """:func:`fit` then :meth:`FittedSpec.transform` on the same table, converting each input column once."""
    cache = _InputCache(data)
    fitted = _fit(spec, data, cache)
    if sparse:
        return fitted, fitted._transform_sparse(data, cache)
    return fitted, fitted._transform(data, cache)


def _fit(spec: FeatureSpec, data: Any, cache: _InputCache) -> FittedSpec:
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"fit expects a FeatureSpec, got {type(spec).__name__}")
    if _n_rows(data) == 0:
        raise FeatureError("cannot fit a feature spec on an empty table (0 rows)")
    if spec.label is not None and spec.label not in _columns_of(data):
        raise MissingFeatureError(
            f"label column {spec.label!r} is missing from the data", feature=None, column=spec.label
        )
    _check_columns(data, spec.features)
    chains: list[list[Transformer]] = []
    for fdef in spec.features:
        values = cache.input_for(fdef)
        chain: list[Transformer] = []
        last = len(fdef.transforms) - 1
        for j, tdef in enumerate(fdef.transforms):
            t = tdef.create(fdef.name)
            t.fit(values)
            if j < last:
                values = t.transform_batch(values)
            chain.append(t)
        chains.append(chain)
    return FittedSpec(spec, chains)


def _check_columns(data: Any, features: Iterable[FeatureDef]) -> None:
    """Raise MissingFeatureError for the first input column the table lacks."""
    present = set(_columns_of(data))
    for fdef in features:
        for c in fdef.columns:
            if c not in present:
                _get_column(data, c, fdef.name)


# ---------------------------------------------------------------------------------------------
# The fitted spec
# ---------------------------------------------------------------------------------------------


def canonical_json(doc: Any) -> bytes:
    """The bytes the content hash is computed over (sorted keys, no blanks, ASCII)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode()


def _content_hash(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "content_hash"}
    return "sha256:" + hashlib.sha256(canonical_json(body)).hexdigest()


class _Compiled:
    """One feature ready to transform: its chain, output kind and place in the output row."""

    __slots__ = ("chain", "fdef", "kind", "names", "offset", "width")

    def __init__(self, fdef: FeatureDef, chain: list[Transformer], offset: int) -> None:
        self.fdef = fdef
        self.chain = chain
        self.kind = chain[-1].output_kind if chain else NUMERIC
        self.offset = offset
        self.width = chain[-1].width() if self.kind in (ONE_HOT, MULTI_HOT) else 1
        self.names = chain[-1].output_names() if self.kind in (ONE_HOT, MULTI_HOT) else [fdef.name]
        if len(self.names) != self.width:
            raise FeatureSpecError(
                f"transformer {fdef.transforms[-1].ref!r} declares {self.width} output columns but "
                f"{len(self.names)} names",
                feature=fdef.name,
            )


class FittedSpec:
    """A fitted feature spec: config + state; transforms data for training and serving."""

    def __init__(self, spec: FeatureSpec, chains: list[list[Transformer]]) -> None:
        self.spec = spec
        self._chains = chains
        self._compiled: list[_Compiled] = []
        offset = 0
        for fdef, chain in zip(spec.features, chains):
            comp = _Compiled(fdef, chain, offset)
            self._compiled.append(comp)
            offset += comp.width
        self._width = offset
        self._feature_names = [n for c in self._compiled for n in c.names]
        seen: set[str] = set()
        for n in self._feature_names:
            if n in seen:
                raise FeatureSpecError(f"two output columns are both named {n!r}; rename a feature")
            seen.add(n)
        self._doc = self._build_doc()
        self._row_fn = compile_row_function(self._compiled, self.spec.on_missing, self._width)
        # the columnar transform_rows path is proven bit-identical to the row path for the built-in
        # transformers only; a custom transformer's transform_batch and transform_value are its own
        builtin = set(BUILTIN_TRANSFORMERS.values())
        self._columnar = all(type(t) in builtin for chain in chains for t in chain)
        self._input_columns = list(dict.fromkeys(c for comp in self._compiled for c in comp.fdef.columns))

    # -- properties ---------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """Names of the output columns, in order."""
        return list(self._feature_names)

    @property
    def n_outputs(self) -> int:
        return self._width

    @property
    def input_columns(self) -> list[str]:
        return self.spec.input_columns

    @property
    def label(self) -> str | None:
        return self.spec.label

    @property
    def content_hash(self) -> str:
        return self._doc["content_hash"]

    @property
    def format_version(self) -> int:
        return FORMAT_VERSION

    def transformer_versions(self) -> dict[str, list[tuple[str, str]]]:
        """Per feature, the (transformer, version) pairs it was fitted with."""
        return {
            f.name: [(t.ref, str(c.version)) for t, c in zip(f.transforms, chain)]
            for f, chain in zip(self.spec.features, self._chains)
        }

    # -- serialisation ------------------------------------------------------------------------
    def _build_doc(self) -> dict:
        state = []
        for fdef, chain in zip(self.spec.features, self._chains):
            steps = []
            for tdef, t in zip(fdef.transforms, chain):
                steps.append({"name": tdef.ref, "version": type(t).version, "state": t.get_state()})
            state.append({"feature": fdef.name, "transforms": steps})
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "state": state,
            "feature_names": self._feature_names,
        }
        try:
            doc = json.loads(canonical_json(doc))  # normal form; fails early on non-JSON state
        except (TypeError, ValueError) as exc:
            raise FeatureError(f"a transformer state is not JSON-serialisable: {exc}") from None
        doc["content_hash"] = _content_hash(doc)
        return doc

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self._doc))

    def to_json(self) -> str:
        return json.dumps(self._doc, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=True) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted spec as JSON (to a temporary file, then renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedSpec:
        """Load a fitted spec saved by :meth:`save`; refuses unknown transformer versions."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FeatureSpecError("fitted spec file not found", source=str(p)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise FeatureSpecError(f"cannot read the fitted spec: {exc}", source=str(p)) from None
        return cls.from_json(text, source=str(p))

    @classmethod
    def from_json(cls, text: str | bytes, source: str | None = None) -> FittedSpec:
        try:
            doc = safejson.loads(text, source=source or "<string>")
        except safejson.JSONInputError as exc:
            at = f" (at {exc.path})" if exc.path else ""
            raise FeatureSpecError(f"not a fitted spec: {exc.problem}{at}", line=exc.line, source=source) from None
        return cls.from_dict(doc, source=source)

    @classmethod
    def from_dict(cls, doc: Any, source: str | None = None) -> FittedSpec:
        def err(msg: str, **kw: Any) -> FeatureSpecError:
            return FeatureSpecError(msg, source=source, **kw)

        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise err(f'not a fitted feature spec (expected "format": "{FORMAT}")')
        version = doc.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise err(
                f"fitted spec format version {version!r} is not supported (this library reads up to {FORMAT_VERSION})",
                field="format_version",
            )
        recorded = doc.get("content_hash")
        actual = _content_hash(doc)
        if recorded != actual:
            raise err(
                f"content hash mismatch: the file records {recorded!r} but its content hashes to {actual!r} "
                "(was it edited or truncated?)",
                field="content_hash",
            )
        raw_spec, state = doc.get("spec"), doc.get("state")
        if not isinstance(raw_spec, dict) or not isinstance(state, list):
            raise err("fitted spec lacks 'spec' or 'state'")
        # refuse transformer versions we do not have before touching any option
        for fstate in state:
            fname = fstate.get("feature")
            for j, step in enumerate(fstate.get("transforms", [])):
                ref, wanted = step.get("name"), step.get("version")
                try:
                    tcls = get_transformer_class(ref)
                except TransformerLookupError as exc:
                    raise err(str(exc), feature=fname, field=f"transforms[{j}]") from None
                if str(tcls.version) != str(wanted):
                    raise err(
                        f"transformer {ref!r} version {wanted} was used to fit this spec, but version "
                        f"{tcls.version} is installed; refit the spec or install the matching version",
                        feature=fname,
                        field=f"transforms[{j}]",
                    )
        spec = FeatureSpec.from_dict(raw_spec, source=source)
        if len(state) != len(spec.features):
            raise err(
                f"fitted spec has state for {len(state)} features but its spec defines {len(spec.features)}"
            )
        chains: list[list[Transformer]] = []
        for fdef, fstate in zip(spec.features, state):
            steps = fstate.get("transforms", [])
            if fstate.get("feature") != fdef.name or len(steps) != len(fdef.transforms):
                raise err("fitted spec state does not match its spec", feature=fdef.name)
            chain = []
            for j, (tdef, step) in enumerate(zip(fdef.transforms, steps)):
                t = tdef.create(fdef.name)
                try:
                    t.set_state(step.get("state") or {})
                except (KeyError, TypeError, ValueError) as exc:
                    raise err(
                        f"bad state for {tdef.ref!r}: {exc!r}", feature=fdef.name, field=f"transforms[{j}]"
                    ) from None
                chain.append(t)
            chains.append(chain)
        fitted = cls(spec, chains)
        if fitted.content_hash != recorded:
            raise err("fitted spec did not load back to the same content (library bug?)")
        return fitted

    # -- batch transform ----------------------------------------------------------------------
    def transform(self, data: Any, *, sparse: bool = False) -> Any:
        """Transform a table (pandas DataFrame or pyarrow Table) into a float32 matrix.

        Columns are :attr:`feature_names`. A missing input column raises
        :class:`MissingFeatureError`; a value of the wrong type raises :class:`FeatureTypeError`.
        With ``sparse=True`` the result is a ``scipy.sparse.csr_matrix`` (float32) whose
        ``toarray()`` has the same bits; every numeric output is stored (zeros and NaN too),
        one-hot zeros are not (XGBoost reads absent entries as missing).
        """
        cache = _InputCache(data)
        if sparse:
            return self._transform_sparse(data, cache)
        return self._transform(data, cache)

    def _feature_outputs(self, data: Any, cache: _InputCache):
        """Yield (compiled feature, whole-column output) in output order."""
        for comp in self._compiled:
            values = cache.input_for(comp.fdef)
            for t in comp.chain:
                values = t.transform_batch(values)
            yield comp, values

    def _transform_sparse(self, data: Any, cache: _InputCache):
        import scipy.sparse

        n = _n_rows(data)
        _check_columns(data, (c.fdef for c in self._compiled))
        if any(c.kind == MULTI_HOT for c in self._compiled):
            return self._transform_sparse_general(data, cache, n)
        k = len(self._compiled)
        vals = np.empty((n, k), dtype=np.float32)
        cols = np.empty((n, k), dtype=np.int32)
        present = None
        with np.errstate(over="ignore"):
            for j, (comp, v) in enumerate(self._feature_outputs(data, cache)):
                off = comp.offset
                if comp.kind == NUMERIC:
                    vals[:, j] = _finish_numeric(v)
                    cols[:, j] = off
                else:
                    idx = v.idx if isinstance(v, OneHotBlock) else np.asarray(v)
                    hot = idx >= 0
                    vals[:, j] = 1.0
                    cols[:, j] = off + np.where(hot, idx, 0)
                    if not hot.all():
                        if present is None:
                            present = np.ones((n, k), dtype=bool)
                        present[:, j] = hot
        vals += _F32_ZERO  # -0.0 -> 0.0, as the dense paths do
        if present is None:
            indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
            data_arr, indices = vals.reshape(-1), cols.reshape(-1)
        else:
            indptr = np.concatenate([[0], np.cumsum(present.sum(axis=1, dtype=np.int64))])
            data_arr, indices = vals[present], cols[present]
        return scipy.sparse.csr_matrix((data_arr, indices, indptr), shape=(n, self._width))

    def _transform_sparse_general(self, data: Any, cache: _InputCache, n: int):
        import scipy.sparse

        rows, cols, vals = [], [], []
        with np.errstate(over="ignore"):
            for comp, v in self._feature_outputs(data, cache):
                off = comp.offset
                if comp.kind == NUMERIC:
                    rows.append(np.arange(n, dtype=np.int64))
                    cols.append(np.full(n, off, dtype=np.int64))
                    vals.append(_finish_numeric(v).astype(np.float32) + _F32_ZERO)
                elif comp.kind == ONE_HOT:
                    idx = v.idx if isinstance(v, OneHotBlock) else np.asarray(v)
                    r = np.flatnonzero(idx >= 0)
                    rows.append(r)
                    cols.append(off + idx[r])
                    vals.append(np.ones(len(r), dtype=np.float32))
                else:
                    pos = np.unique(np.asarray(v.rows, dtype=np.int64) * self._width + off + v.cols)
                    rows.append(pos // self._width)
                    cols.append(pos % self._width)
                    vals.append(np.ones(len(pos), dtype=np.float32))
        coo = scipy.sparse.coo_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, self._width)
        )
        return coo.tocsr()

    def _transform(self, data: Any, cache: _InputCache) -> np.ndarray:
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes +-inf, as in rows
            return self._transform_blocks(data, cache)

    def _transform_blocks(self, data: Any, cache: _InputCache) -> np.ndarray:
        n = _n_rows(data)
        _check_columns(data, (c.fdef for c in self._compiled))
        return self._fill(n, cache)

    def _fill(self, n: int, cache: Any) -> np.ndarray:
        """The output matrix of ``n`` rows from ``cache.input_for(fdef)`` (batch forms of the inputs)."""
        # numeric-input chains are elementwise: run them block by block (cache friendly, small
        # temporaries); categorical, list and cross features work on distinct values: run whole
        numeric: list[tuple[_Compiled, np.ndarray]] = []
        whole: list[tuple[_Compiled, Any]] = []
        for comp in self._compiled:
            values = cache.input_for(comp.fdef)
            if comp.fdef.dtype == NUMERIC:
                numeric.append((comp, values))
            else:
                for t in comp.chain:
                    values = t.transform_batch(values)
                if comp.kind == MULTI_HOT and len(values.rows) > 1 and (np.diff(values.rows) < 0).any():
                    order = np.argsort(values.rows, kind="stable")
                    values = MultiHotBlock(values.rows[order], values.cols[order])
                whole.append((comp, values))
        out = np.zeros((n, self._width), dtype=np.float32)
        width = self._width
        # numeric outputs are gathered into one float64 block and finished and cast to float32 in
        # one go; one-hot outputs become one scatter of 1.0 (the same per-element operations as
        # one _write per feature, with a handful of numpy calls per block instead of a handful per
        # feature -- what a small online batch pays for)
        order = [(comp, x, True) for comp, x in numeric] + [(comp, v, False) for comp, v in whole]
        num_offsets = np.asarray([comp.offset for comp, _, _ in order if comp.kind == NUMERIC], dtype=np.intp)
        for b0 in range(0, n, _BLOCK_ROWS):
            b1 = min(n, b0 + _BLOCK_ROWS)
            m = b1 - b0
            blk = out[b0:b1]
            flat = blk.reshape(-1)
            vals = np.empty((len(num_offsets), m), dtype=np.float64)
            hot: list[np.ndarray] = []
            row_base = None
            j = 0
            for comp, v, by_block in order:
                if by_block:
                    v = v[b0:b1]
                    for t in comp.chain:
                        v = t.transform_batch(v)
                kind = comp.kind
                if kind == NUMERIC:
                    vals[j] = v if by_block else v[b0:b1]
                    j += 1
                elif kind == ONE_HOT:
                    idx = v.idx if isinstance(v, OneHotBlock) else np.asarray(v)
                    if not by_block:
                        idx = idx[b0:b1]
                    if row_base is None:
                        row_base = np.arange(0, width * m, width, dtype=np.int64)
                    pos = row_base + comp.offset
                    pos += idx
                    keep = idx >= 0
                    hot.append(pos if keep.all() else pos[keep])
                else:
                    _write(blk, flat, comp, v, b0, b1, sliced=by_block)
            if hot:
                flat[hot[0] if len(hot) == 1 else np.concatenate(hot)] = 1.0
            if len(num_offsets):
                blk[:, num_offsets] = _finish_numeric(vals).T
            blk += _F32_ZERO  # -0.0 -> 0.0 (also what float32 underflow gives), as the row path does
        return out

    def labels(self, data: Any) -> np.ndarray:
        """The label column as float32 (numbers or numeric text)."""
        if self.label is None:
            raise FeatureError("this feature spec has no label")
        series = _get_column(data, self.label, self.label)
        return _numeric_batch(series, self.label).astype(np.float32)

    # -- row transform ----------------------------------------------------------------------
    def transform_row(self, row: Mapping[str, Any]) -> np.ndarray:
        """Transform one request (a mapping of input column -> value) into a float32 vector.

        Bit-identical to the matching row of :meth:`transform`. An absent key follows the
        feature's ``on_missing`` policy: ``default`` treats it as a missing value, ``error``
        raises :class:`MissingFeatureError`.
        """
        if type(row) is not dict and not isinstance(row, Mapping):
            raise FeatureTypeError(f"a row must be a mapping of column -> value, got {type(row).__name__}")
        return self._row_fn(row)

    def transform_rows(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Transform several requests into a 2-D float32 matrix (bit-identical to :meth:`transform`).

        Row ``i`` has the bits of ``transform_row(rows[i])``. From :data:`COLUMNAR_MIN_ROWS` rows
        up (and when every transformer is a built-in one), the rows are turned into input columns
        once -- each value converted by the row path's own functions -- and run through the batch
        transform's vectorised steps, whose numbers the row path reproduces bit for bit
        (tests/test_features_property.py). Should that path decline the rows (an absent key with
        ``on_missing: error``, a value of the wrong type, a row that is not a mapping), they go
        through :meth:`transform_row` one by one: the same result, or the same error for the first
        failing row and feature, as without the columnar path.
        """
        if not isinstance(rows, list):
            rows = list(rows)
        n = len(rows)
        if not n:
            return np.zeros((0, self._width), dtype=np.float32)
        if n >= COLUMNAR_MIN_ROWS and self._columnar:
            out = self._transform_columns(rows)
            if out is not None:
                return out
        row_fn = self.transform_row
        out = np.empty((n, self._width), dtype=np.float32)
        for i, r in enumerate(rows):
            out[i] = row_fn(r)
        return out

    def _transform_columns(self, rows: list) -> np.ndarray | None:
        """The columnar path of :meth:`transform_rows`; None when it declines the rows."""
        try:
            with np.errstate(all="ignore"):  # as in the row path: no warnings (inf - inf, overflow)
                return self._fill(len(rows), _RowsInput(rows, self._input_columns, self.spec.on_missing))
        except Exception:  # noqa: BLE001 - the row path decides: same result or the proper error
            return None

    def __repr__(self) -> str:
        return (
            f"FittedSpec({len(self.spec.features)} features -> {self._width} columns, "
            f"{self.content_hash[:19]}...)"
        )
