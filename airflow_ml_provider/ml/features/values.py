"""Value conversion, stable hashing and exact arithmetic shared by the batch and row paths.

Train/serve consistency rests on one rule: every number the row path produces is computed by the
same IEEE-754 float64 operations, in the same order, as the batch path, and only then cast to
float32. The basic operations (``+ - * /``, comparisons, :func:`math.frexp`) are correctly rounded
and give the same bits in numpy and in Python; library functions such as ``log1p`` are not (numpy's
SIMD loops and libm may differ in the last ulp), so :func:`log1p_scalar` / :func:`log1p_array`
implement ``log1p`` from basic operations only.

Categorical values are normalised to *keys* (``str`` or ``None`` for missing) by :func:`to_key`; the
batch path applies the very same function to each distinct value of a column, so both paths agree
by construction.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache
from typing import Any

import numpy as np

from .errors import FeatureTypeError

NAN = float("nan")
INF = float("inf")
#: The smallest float64 that rounds to +inf as float32 (2**128 - 2**103); both paths map
#: |x| >= this to +-inf themselves so the float32 cast never overflows (and never warns).
F32_OVERFLOW = 3.4028235677973366e38
MASK64 = (1 << 64) - 1

# ---------------------------------------------------------------------------------------------
# Conversions (one function per input dtype, used by both paths)
# ---------------------------------------------------------------------------------------------


def _is_pandas_na(value: Any) -> bool:
    name = type(value).__name__
    return name in ("NAType", "NaTType")


def to_float(value: Any, feature: str) -> float:
    """Convert one input value of a numeric feature to a Python float (NaN = missing).

    ``None``, NaN, ``pd.NA`` and the empty (or blank) string are missing. Numbers (including
    numpy scalars and booleans) convert with :class:`float`; strings are parsed with
    :class:`float` after stripping blanks. Anything else raises :class:`FeatureTypeError`.
    """
    t = type(value)
    if t is float:
        return value
    if value is None:
        return NAN
    if t is int or t is bool:
        try:
            return float(value)
        except OverflowError:
            raise FeatureTypeError(
                f"feature {feature!r}: integer {value} is too large for a float", feature=feature, value=value
            ) from None
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return NAN
        try:
            return float(s)
        except ValueError:
            raise FeatureTypeError(
                f"feature {feature!r}: expected a number, got the text {_short(value)}",
                feature=feature,
                value=value,
            ) from None
    if isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
        try:
            return float(value)
        except OverflowError:
            raise FeatureTypeError(
                f"feature {feature!r}: number {value} is too large for a float", feature=feature, value=value
            ) from None
    if _is_pandas_na(value):
        return NAN
    raise FeatureTypeError(
        f"feature {feature!r}: expected a number, got {type(value).__name__} {_short(value)}",
        feature=feature,
        value=value,
    )


def to_key(value: Any, feature: str) -> str | None:
    """Convert one input value of a categorical feature to its key (``None`` = missing).

    Strings are kept as they are (the empty string is missing); integers and integral floats
    become their decimal form (``3`` and ``3.0`` are both ``"3"``, so an integer column that
    pandas turned into floats because of missing values still matches); other floats use
    :func:`repr`; booleans become ``"true"``/``"false"``; bytes are decoded as UTF-8.
    """
    t = type(value)
    if t is str:
        return value if value else None
    if value is None:
        return None
    if t is bool or isinstance(value, np.bool_):
        return "true" if value else "false"
    if t is int or isinstance(value, np.integer):
        return str(int(value))
    if t is float or isinstance(value, np.floating):
        v = float(value)
        if v != v:  # noqa: PLR0124 - NaN test
            return None
        if v.is_integer():
            return str(int(v))
        return repr(v)
    if isinstance(value, str):  # str subclass (e.g. numpy.str_)
        s = str(value)
        return s if s else None
    if isinstance(value, (bytes, bytearray)):
        s = bytes(value).decode("utf-8", "surrogateescape")
        return s if s else None
    if _is_pandas_na(value):
        return None
    raise FeatureTypeError(
        f"feature {feature!r}: expected a categorical value (text or number), got "
        f"{type(value).__name__} {_short(value)}",
        feature=feature,
        value=value,
    )


def to_key_list(value: Any, feature: str, separator: str) -> list[str]:
    """Convert one input value of a list feature to a list of keys (missing elements dropped).

    A list, tuple or array is taken element by element; a string is split on ``separator``;
    ``None``/NaN/empty string is the empty list.
    """
    if value is None:
        return []
    if isinstance(value, str):
        if not value:
            return []
        items: Any = value.split(separator)
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = value
    elif (isinstance(value, float) and math.isnan(value)) or _is_pandas_na(value):
        return []
    else:
        raise FeatureTypeError(
            f"feature {feature!r}: expected a list (or {separator!r}-separated text), got "
            f"{type(value).__name__} {_short(value)}",
            feature=feature,
            value=value,
        )
    out = []
    for item in items:
        k = to_key(item, feature)
        if k is not None:
            out.append(k)
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Stable hashing (never Python's salted hash())
# ---------------------------------------------------------------------------------------------

#: The hash of a missing key.
MISSING_HASH = 0x6D697373696E6721  # "missing!"


@lru_cache(maxsize=1 << 17)
def stable_hash(key: str | None) -> int:
    """A 64-bit hash of a key that is the same in every process, machine and Python version."""
    if key is None:
        return MISSING_HASH
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


_C1 = 0xFF51AFD7ED558CCD
_C2 = 0xC4CEB9FE1A85EC53
CROSS_SEED = 0x9E3779B97F4A7C15


def _fmix64(z: int) -> int:
    z ^= z >> 33
    z = (z * _C1) & MASK64
    z ^= z >> 33
    z = (z * _C2) & MASK64
    z ^= z >> 33
    return z


def cross_hash(hashes: tuple[int, ...] | list[int]) -> int:
    """Combine the stable hashes of the components of a cross (order matters)."""
    h = CROSS_SEED
    for x in hashes:
        h = _fmix64(h ^ x)
    return h


_U33 = np.uint64(33)
_UC1 = np.uint64(_C1)
_UC2 = np.uint64(_C2)


def _fmix64_array(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> _U33)
    z = z * _UC1
    z = z ^ (z >> _U33)
    z = z * _UC2
    return z ^ (z >> _U33)


def cross_hash_array(columns: list[np.ndarray]) -> np.ndarray:
    """Vectorised :func:`cross_hash` over uint64 arrays of component hashes (wrapping arithmetic)."""
    h = np.full(len(columns[0]), CROSS_SEED, dtype=np.uint64)
    for col in columns:
        h = _fmix64_array(h ^ col)
    return h


# ---------------------------------------------------------------------------------------------
# log1p from correctly rounded operations only (bit-identical in both paths)
# ---------------------------------------------------------------------------------------------

_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_SQRT_HALF = 0.70710678118654752440


def log1p_scalar(x: float) -> float:
    """``log(1 + x)`` for a Python float; the same bits as :func:`log1p_array`."""
    if x != x:  # noqa: PLR0124 - NaN test
        return NAN
    if x <= -1.0:
        return -INF if x == -1.0 else NAN
    if x == INF:
        return INF
    u = 1.0 + x
    if u == 1.0:
        return x
    c = (x - (u - 1.0)) / u
    m, e = math.frexp(u)
    if m < _SQRT_HALF:
        m = m + m
        e -= 1
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    hfsq = 0.5 * f * f
    k = float(e)
    return k * _LN2_HI - ((hfsq - (s * (hfsq + r) + (k * _LN2_LO + c))) - f)


def log1p_array(x: np.ndarray) -> np.ndarray:
    """Vectorised :func:`log1p_scalar` over a float64 array (the same operations, in place)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        u = x + 1.0
        c = u - 1.0
        np.subtract(x, c, out=c)
        np.divide(c, u, out=c)  # c = (x - (u - 1)) / u
        m, e = np.frexp(u)
        low = m < _SQRT_HALF
        np.add(m, m, out=m, where=low)
        k = e.astype(np.float64)
        np.subtract(k, low, out=k)
        f = m
        np.subtract(m, 1.0, out=f)
        s = f + 2.0
        np.divide(f, s, out=s)  # s = f / (2 + f)
        z = s * s
        w = z * z
        t1 = w * _LG6
        t1 += _LG4
        t1 *= w
        t1 += _LG2
        t1 *= w  # t1 = w * (LG2 + w * (LG4 + w * LG6))
        t2 = w * _LG7
        t2 += _LG5
        t2 *= w
        t2 += _LG3
        t2 *= w
        t2 += _LG1
        t2 *= z  # t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)))
        t2 += t1  # r
        hfsq = f * 0.5
        hfsq *= f  # 0.5 * f * f
        a = hfsq + t2
        a *= s  # s * (hfsq + r)
        b = k * _LN2_LO
        b += c
        a += b
        np.subtract(hfsq, a, out=a)
        a -= f  # (hfsq - (...)) - f
        out = k * _LN2_HI
        out -= a
        np.copyto(out, x, where=u == 1.0)
        out[x == INF] = INF
        out[x == -1.0] = -INF
        out[(x < -1.0) | np.isnan(x)] = NAN
    return out


# ---------------------------------------------------------------------------------------------
# Batch representation of a categorical column
# ---------------------------------------------------------------------------------------------


class KeyColumn:
    """A categorical column in batch form: distinct ``keys`` and per-row ``codes`` into them.

    Transformers work on the distinct keys with the same per-value function as the row path and
    then gather with ``codes``, so the batch path costs one Python call per distinct value.
    """

    __slots__ = ("codes", "keys")

    def __init__(self, keys: list[str | None], codes: np.ndarray) -> None:
        self.keys = keys
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def counts(self) -> dict[str, int]:
        """Occurrences of each non-missing key."""
        per_code = np.bincount(self.codes, minlength=len(self.keys))
        out: dict[str, int] = {}
        for key, n in zip(self.keys, per_code.tolist()):
            if key is not None and n:
                out[key] = out.get(key, 0) + n
        return out

    def map_keys(self, fn) -> KeyColumn:
        return KeyColumn([fn(k) for k in self.keys], self.codes)

    def gather(self, per_key: list, dtype) -> np.ndarray:
        return np.asarray(per_key, dtype=dtype)[self.codes]

    def values(self) -> list[str | None]:
        keys = self.keys
        return [keys[c] for c in self.codes.tolist()]
