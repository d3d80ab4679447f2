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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatureError, FeatureSpecError, FeatureTypeError, MissingFeatureError
from .registry import TransformerLookupError, get_transformer_class
from .spec import FeatureDef, FeatureSpec
from .transformers import (
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
from .values import NAN, KeyColumn, to_float, to_key, to_key_list

FORMAT = "airflow-ml-provider/fitted-feature-spec"
FORMAT_VERSION = 1

_ABSENT = object()


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
    # text, object or categorical: convert each distinct value with the row path's function
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


def _key_batch(series, feature: str) -> KeyColumn:
    import pandas as pd

    try:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
    except TypeError as exc:
        raise FeatureTypeError(
            f"feature {feature!r}: values are not categorical (text or numbers) ({exc})", feature=feature
        ) from None
    keys = [to_key(u, feature) for u in _as_list(uniques)]
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


def _batch_input(data: Any, fdef: FeatureDef) -> Any:
    if fdef.dtype == CROSS:
        return [_key_batch(_get_column(data, c, fdef.name), fdef.name) for c in fdef.columns]
    series = _get_column(data, fdef.column, fdef.name)
    if fdef.dtype == NUMERIC:
        return _numeric_batch(series, fdef.name)
    if fdef.dtype == CATEGORICAL:
        return _key_batch(series, fdef.name)
    return _list_batch(series, fdef.name, fdef.separator)


def _row_converter(fdef: FeatureDef) -> Callable[[Any], Any]:
    name = fdef.name
    if fdef.dtype == NUMERIC:
        return lambda v: to_float(v, name)
    if fdef.dtype == CATEGORICAL:
        return lambda v: to_key(v, name)
    sep = fdef.separator
    return lambda v: to_key_list(v, name, sep)


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def fit(spec: FeatureSpec, data: Any) -> FittedSpec:
    """Learn every transformer's state from ``data`` (pandas DataFrame or pyarrow Table)."""
    if not isinstance(spec, FeatureSpec):
        raise TypeError(f"fit expects a FeatureSpec, got {type(spec).__name__}")
    if _n_rows(data) == 0:
        raise FeatureError("cannot fit a feature spec on an empty table (0 rows)")
    if spec.label is not None and spec.label not in _columns_of(data):
        raise MissingFeatureError(
            f"label column {spec.label!r} is missing from the data", feature=None, column=spec.label
        )
    chains: list[list[Transformer]] = []
    for fdef in spec.features:
        values = _batch_input(data, fdef)
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
        self._row_plans = [self._row_plan(c) for c in self._compiled]
        self._zeros = [0.0] * self._width

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
            doc = json.loads(text)
        except ValueError as exc:
            raise FeatureSpecError(f"not a fitted spec (invalid JSON: {exc})", source=source) from None
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
    def transform(self, data: Any) -> np.ndarray:
        """Transform a table (pandas DataFrame or pyarrow Table) into a float32 matrix.

        Columns are :attr:`feature_names`. A missing input column raises
        :class:`MissingFeatureError`; a value of the wrong type raises :class:`FeatureTypeError`.
        """
        n = _n_rows(data)
        # check every column first, so the error names the first missing one before any work
        present = set(_columns_of(data))
        for comp in self._compiled:
            for c in comp.fdef.columns:
                if c not in present:
                    _get_column(data, c, comp.fdef.name)
        out = np.zeros((n, self._width), dtype=np.float32)
        for comp in self._compiled:
            values = _batch_input(data, comp.fdef)
            for t in comp.chain:
                values = t.transform_batch(values)
            off = comp.offset
            if comp.kind == NUMERIC:
                values = np.asarray(values, dtype=np.float64)
                nan = np.isnan(values)
                if nan.any():
                    values = np.where(nan, NAN, values)
                out[:, off] = values
            elif comp.kind == ONE_HOT:
                idx = values.idx if isinstance(values, OneHotBlock) else np.asarray(values)
                rows = np.flatnonzero(idx >= 0)
                out[rows, off + idx[rows]] = 1.0
            else:
                block = values
                assert isinstance(block, MultiHotBlock)
                out[block.rows, off + block.cols] = 1.0
        return out

    def labels(self, data: Any) -> np.ndarray:
        """The label column as float32 (numbers or numeric text)."""
        if self.label is None:
            raise FeatureError("this feature spec has no label")
        series = _get_column(data, self.label, self.label)
        return _numeric_batch(series, self.label).astype(np.float32)

    # -- row transform ------------------------------------------------------------------------
    def _row_plan(self, comp: _Compiled) -> Callable[[Mapping, list], None]:
        fdef = comp.fdef
        name = fdef.name
        policy = fdef.on_missing or self.spec.on_missing
        raise_missing = policy == "error"
        fns = [t.transform_value for t in comp.chain]
        off = comp.offset
        kind = comp.kind

        def fetch(row: Mapping, column: str) -> Any:
            v = row.get(column, _ABSENT)
            if v is _ABSENT:
                if raise_missing:
                    raise MissingFeatureError(
                        f"feature {name!r}: the request has no {column!r} (on_missing: error)",
                        feature=name,
                        column=column,
                    )
                return None
            return v

        if fdef.dtype == CROSS:
            columns = list(fdef.columns)

            def convert(row: Mapping) -> Any:
                return tuple(to_key(fetch(row, c), name) for c in columns)
        else:
            column = fdef.column
            conv = _row_converter(fdef)

            def convert(row: Mapping) -> Any:
                return conv(fetch(row, column))

        if kind == NUMERIC:

            def run(row: Mapping, out: list) -> None:
                x = convert(row)
                for fn in fns:
                    x = fn(x)
                out[off] = x if x == x else NAN

        elif kind == ONE_HOT:

            def run(row: Mapping, out: list) -> None:
                x = convert(row)
                for fn in fns:
                    x = fn(x)
                if x >= 0:
                    out[off + x] = 1.0

        else:

            def run(row: Mapping, out: list) -> None:
                x = convert(row)
                for fn in fns:
                    x = fn(x)
                for i in x:
                    out[off + i] = 1.0

        return run

    def transform_row(self, row: Mapping[str, Any]) -> np.ndarray:
        """Transform one request (a mapping of input column -> value) into a float32 vector.

        Bit-identical to the matching row of :meth:`transform`. An absent key follows the
        feature's ``on_missing`` policy: ``default`` treats it as a missing value, ``error``
        raises :class:`MissingFeatureError`.
        """
        if not isinstance(row, Mapping):
            raise FeatureTypeError(f"a row must be a mapping of column -> value, got {type(row).__name__}")
        out = self._zeros[:]
        for plan in self._row_plans:
            plan(row, out)
        return np.array(out, dtype=np.float32)

    def transform_rows(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Transform several requests into a 2-D float32 matrix (bit-identical to :meth:`transform`)."""
        vectors = [self.transform_row(r) for r in rows]
        if not vectors:
            return np.zeros((0, self._width), dtype=np.float32)
        return np.vstack(vectors)

    def __repr__(self) -> str:
        return (
            f"FittedSpec({len(self.spec.features)} features -> {self._width} columns, "
            f"{self.content_hash[:19]}...)"
        )
