"""Compile a fitted spec's row transform into one straight-line Python function.

An online request goes through ~30 features; calling a method per transformer per feature costs
more than the arithmetic. So each built-in transformer can describe its row step as source lines
(:meth:`Transformer.row_code`) that do *exactly* the operations of its ``transform_value`` (same
float64 operations in the same order, so the bits do not change); the lines of all features are
joined into one function and compiled once when the fitted spec is loaded. A transformer without
``row_code`` (e.g. a custom one) is called through its ``transform_value``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import MissingFeatureError
from .transformers import CROSS, MULTI_HOT, NUMERIC, ONE_HOT, Transformer
from .values import F32_OVERFLOW, INF, NAN, to_float, to_key, to_key_list

# Numbers are written into the float32 output by numpy's float64 -> float32 cast (the same C cast
# as the batch path's), after the same NaN / overflow normalisation in both paths.


class Consts:
    """Collects the constants generated code refers to; numbers become literals."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        if type(value) is float and math.isfinite(value):
            return repr(value)
        if type(value) is int:
            return repr(value)
        if isinstance(value, str):
            return repr(value)
        name = f"_c{len(self.namespace)}"
        self.namespace[name] = value
        return name


def _missing(feature: str, column: str) -> None:
    raise MissingFeatureError(
        f"feature {feature!r}: the request has no {column!r} (on_missing: error)",
        feature=feature,
        column=column,
    )


def compile_row_function(compiled: list, default_policy: str, width: int):
    """Build ``f(row) -> float32 vector`` from the fitted spec's compiled features."""
    c = Consts()
    ns = c.namespace
    ns.update(
        _ABSENT=_ABSENT,
        _missing=_missing,
        _to_float=to_float,
        _to_key=to_key,
        _to_key_list=to_key_list,
        _NAN=NAN,
        _INF=INF,
        _NINF=-INF,
        _zeros=np.zeros,
        _f32=np.float32,
        _F32_ZERO=np.float32(0.0),
    )
    lines = [
        "def _transform_row(row, *, __LOCALS__):",
        "    get = row.get",
        f"    out = _zeros({width}, _f32)",
    ]
    for comp in compiled:
        fdef = comp.fdef
        name = fdef.name
        raise_missing = (fdef.on_missing or default_policy) == "error"
        body: list[str] = [f"# feature {name!r}"]

        def fetch(
            column: str, var: str = "v", name: str = name, raise_missing: bool = raise_missing
        ) -> list[str]:
            out = [f"{var} = get({column!r}, _ABSENT)"]
            if raise_missing:
                out.append(f"if {var} is _ABSENT: _missing({name!r}, {column!r})")
            else:
                out.append(f"if {var} is _ABSENT: {var} = None")
            return out

        if fdef.dtype == CROSS:
            keys = []
            for j, column in enumerate(fdef.columns):
                body += fetch(column, f"v{j}")
                keys.append(f"(v{j} if (type(v{j}) is str and v{j}) else _to_key(v{j}, {name!r}))")
            body.append(f"x = ({', '.join(keys)},)")
        else:
            body += fetch(fdef.column)
            if fdef.dtype == NUMERIC:
                body.append(f"x = v if type(v) is float else _to_float(v, {name!r})")
            elif fdef.dtype == "categorical":
                body.append(f"x = v if (type(v) is str and v) else _to_key(v, {name!r})")
            else:
                body.append(f"x = _to_key_list(v, {name!r}, {fdef.separator!r})")
        for t in comp.chain:
            body += _step_code(t, "x", c)
        off = comp.offset
        if comp.kind == NUMERIC:
            # canonical NaN, +-inf beyond float32's range (as the batch path does)
            body += [
                "if x != x: x = _NAN",
                f"elif x >= {F32_OVERFLOW!r}: x = _INF",
                f"elif x <= {-F32_OVERFLOW!r}: x = _NINF",
                f"out[{off}] = x",
            ]
        elif comp.kind == ONE_HOT:
            body.append(f"if x >= 0: out[{off} + x] = 1.0")
        elif comp.kind == MULTI_HOT:
            body.append(f"for i in x: out[{off} + i] = 1.0")
        lines += ["    " + ln for ln in body]
    lines.append(
        "    out += _F32_ZERO"
    )  # -0.0 -> 0.0 (from -0.0 or float32 underflow), as the batch path does
    lines.append("    return out")
    source = "\n".join(lines) + "\n"
    # every helper and constant becomes a keyword default: a fast local instead of a global lookup
    source = source.replace("__LOCALS__", ", ".join(f"{k}={k}" for k in ns))
    code = compile(source, "<airflow_ml_provider.features.row>", "exec")
    exec(code, ns)  # noqa: S102 - our own generated source, constants passed by name
    fn = ns["_transform_row"]
    fn.__source__ = source
    return fn


def _step_code(t: Transformer, x: str, c: Consts) -> list[str]:
    code = t.row_code(x, c)
    if code is not None:
        return code
    return [f"{x} = {c(t.transform_value)}({x})"]


_ABSENT = object()
