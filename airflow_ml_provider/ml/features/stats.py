"""Mergeable fitting statistics, shared by the in-memory fit and the streamed fit.

Every fitted number is computed from statistics that can be accumulated batch by batch and give
the same result whatever the batches are, so ``fit(spec, table)`` and
:func:`~airflow_ml_provider.ml.features.streaming.fit_parquet` on the same rows produce the same
fitted spec, bit for bit (tests/test_features_streaming.py):

* counts, minimum and maximum: exact;
* sums and sums of squares: **exact** (:class:`ExactMoments`). Each float64 is an integer mantissa
  times a power of two; the mantissas (and the exact limbs of their squares) are summed per
  exponent (read from the IEEE-754 bits) with ``numpy.bincount`` in pieces small enough that float64 adds them without rounding,
  and the per-exponent totals are combined in Python integers. The mean is the correctly rounded
  ``sum / count`` and the standard deviation the correctly rounded ``sqrt`` of the exact
  population variance (a float64 pairwise sum, as ``numpy.mean`` does, depends on the order and
  grouping of the values, so it cannot be merged exactly);
* category frequencies: exact counts (:class:`~collections.Counter` merge);
* quantiles (``bucketize`` edges, the ``median`` fill): :class:`QuantileSample` keeps every finite
  value while there are at most ``cap`` of them and computes ``numpy.quantile`` on them -- exactly
  what the in-memory fit computes; beyond ``cap`` values it keeps a uniform reservoir sample of
  ``cap`` values (Algorithm R, fixed seed, so a run is reproducible) and the edges are quantiles of
  the sample. Documented tolerance: the rank of a sample quantile in the full data is off by a
  standard deviation of ``sqrt(p (1 - p) / cap) <= 0.5 / sqrt(cap)`` (0.0005 at the default cap of
  1,000,000), checked in the tests at 5 standard deviations.

Pure numpy and Python integers; no other import.
"""

from __future__ import annotations

import math

import numpy as np

#: Values a streamed quantile keeps exactly before it samples (8 MB of float64 per statistic).
DEFAULT_QUANTILE_CAP = 1_000_000

_NBINS = 2046  # biased exponents of finite float64 (1 .. 2046), subnormals folded into bin 0
_UNIT_SHIFT = 1074  # x = +-m * 2**bin * 2**-1074
_MANT = (1 << 52) - 1
_M26 = (1 << 26) - 1
_M27 = (1 << 27) - 1
#: Values per numpy step.
_PIECE = 1 << 16
#: Values summed in float64 bins before they go to Python integers: every limb is < 2**27, so a
#: bin's total stays below 2**51 and float64 adds it without rounding.
_FLUSH = 1 << 24


def _bins(weights: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.bincount(idx, weights=weights.astype(np.float64), minlength=_NBINS)


class ExactMoments:
    """Count, exact sum and (optionally) exact sum of squares of finite float64 values.

    :param squares: also accumulate the sum of squares (needed for :meth:`std`).
    """

    __slots__ = ("n", "squares", "sum_units", "sq_units")

    def __init__(self, squares: bool = True) -> None:
        self.n = 0
        self.squares = squares
        self.sum_units = 0  # the exact sum in units of 2**-1074
        self.sq_units = 0  # the exact sum of squares in units of 2**-2148

    def update(self, x: np.ndarray) -> None:
        """Add finite values (the caller drops NaN and +-inf)."""
        x = np.ascontiguousarray(x, dtype=np.float64).reshape(-1)
        if not len(x):
            return
        self.n += len(x)
        acc = [np.zeros(_NBINS) for _ in range(8 if self.squares else 2)]
        pending = 0
        # pieces of 64k values: temporaries stay in reused heap memory (whole-column temporaries
        # cost a page fault per 4 KiB and measured 4x slower); the float64 bin totals are flushed
        # to Python integers before they could lose a bit
        for p0 in range(0, len(x), _PIECE):
            piece = x[p0:p0 + _PIECE]
            self._piece(piece, acc)
            pending += len(piece)
            if pending >= _FLUSH:
                self._flush(acc)
                pending = 0
        if pending:
            self._flush(acc)

    def _piece(self, x: np.ndarray, acc: list[np.ndarray]) -> None:
        # x = +-m * 2**(bin - 1074) with m < 2**53: the IEEE-754 fields (numpy.frexp is 10x slower)
        bits = x.view(np.int64)
        expo = (bits >> 52) & 0x7FF
        m = bits & _MANT
        normal = expo > 0
        m |= normal.astype(np.int64) << 52
        idx = (expo - normal).astype(np.intp)  # subnormals (expo 0) share bin 0 with the smallest normals
        sign = bits >> 63  # 0 or -1
        sm = (m ^ sign) - sign  # -m where the sign bit is set (two's complement)
        acc[0] += _bins(sm >> 26, idx)  # floor shift: sm == hi * 2**26 + lo for negative sm too
        acc[1] += _bins(sm & _M26, idx)
        if not self.squares:
            return
        b = m & _M27
        a = m >> 27  # m = a * 2**27 + b, a < 2**26, b < 2**27
        aa = a * a  # < 2**52
        ab = a * b  # < 2**53
        bb = b * b  # < 2**54;  m**2 = aa * 2**54 + ab * 2**28 + bb
        acc[2] += _bins(aa >> 26, idx)
        acc[3] += _bins(aa & _M26, idx)
        acc[4] += _bins(ab >> 26, idx)
        acc[5] += _bins(ab & _M26, idx)
        acc[6] += _bins(bb >> 27, idx)
        acc[7] += _bins(bb & _M27, idx)

    def _flush(self, acc: list[np.ndarray]) -> None:
        hi, lo = acc[0], acc[1]
        total = 0
        for b in np.flatnonzero((hi != 0) | (lo != 0)).tolist():
            total += ((int(hi[b]) << 26) + int(lo[b])) << b
        self.sum_units += total
        if self.squares:
            limbs = list(zip(acc[2:], (80, 54, 54, 28, 27, 0)))
            nz = acc[2] != 0
            for s in acc[3:]:
                nz |= s != 0
            sq = 0
            for b in np.flatnonzero(nz).tolist():
                per_bin = 0
                for s, shift in limbs:
                    v = s[b]
                    if v:
                        per_bin += int(v) << shift
                sq += per_bin << (2 * b)
            self.sq_units += sq
        for a in acc:
            a.fill(0.0)

    def merge(self, other: ExactMoments) -> None:
        self.n += other.n
        self.sum_units += other.sum_units
        self.sq_units += other.sq_units

    def mean(self) -> float | None:
        """The correctly rounded mean, or None without values."""
        if not self.n:
            return None
        return self.sum_units / (self.n << _UNIT_SHIFT)  # int / int: correctly rounded

    def std(self) -> float | None:
        """The correctly rounded population standard deviation, or None without values."""
        if not self.n or not self.squares:
            return None
        num = self.n * self.sq_units - self.sum_units * self.sum_units  # var = num / (n**2 * 2**2148)
        if num <= 0:
            return 0.0
        return sqrt_ratio(num, (self.n * self.n) << (2 * _UNIT_SHIFT))


def sqrt_ratio(num: int, den: int) -> float:
    """The correctly rounded ``sqrt(num / den)`` of positive integers (+inf beyond float64)."""
    # scale so the integer root has ~66 bits, then a sticky bit for the inexact case
    k = 66 - (num.bit_length() - den.bit_length()) // 2
    if k >= 0:
        y, rem = divmod(num << (2 * k), den)
    else:
        y, rem = divmod(num, den << (-2 * k))
    q = math.isqrt(y)
    if rem or q * q != y:
        q |= 1
    try:
        return math.ldexp(float(q), -k)
    except OverflowError:
        return math.inf


class QuantileSample:
    """The finite values of a column, all of them up to ``cap``, then a uniform reservoir sample.

    :param cap: values kept; ``None`` keeps every value (the in-memory fit).
    :param seed: the reservoir's random seed (fixed: a streamed fit is reproducible).
    """

    def __init__(self, cap: int | None = DEFAULT_QUANTILE_CAP, seed: int = 0) -> None:
        if cap is not None and cap < 1:
            raise ValueError(f"quantile cap must be at least 1, got {cap}")
        self.cap = cap
        self.n = 0
        self._parts: list[np.ndarray] | None = []
        self._reservoir: np.ndarray | None = None
        self._rng = np.random.default_rng(seed)

    @property
    def exact(self) -> bool:
        """True while every value seen is kept (the quantiles are exact)."""
        return self._reservoir is None

    def update(self, x: np.ndarray) -> None:
        """Add finite values."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not len(x):
            return
        if self._reservoir is None:
            if self.cap is None or self.n + len(x) <= self.cap:
                self._parts.append(np.array(x, copy=True))
                self.n += len(x)
                return
            held = np.concatenate([*self._parts, x])
            self._parts = None
            self._reservoir = np.array(held[: self.cap], copy=True)
            self.n = self.cap
            x = held[self.cap:]
        self._sample(x)

    def _sample(self, x: np.ndarray) -> None:
        # Algorithm R, vectorised: value number t (0-based) replaces slot j ~ U{0..t} if j < cap; a
        # later value overwrites an earlier one in the same slot, as the sequential loop would
        t = self.n + np.arange(len(x), dtype=np.int64)
        j = self._rng.integers(0, t + 1)
        keep = j < self.cap
        slots, vals = j[keep][::-1], x[keep][::-1]
        slots, first = np.unique(slots, return_index=True)
        self._reservoir[slots] = vals[first]
        self.n += len(x)

    def values(self) -> np.ndarray:
        if self._reservoir is not None:
            return self._reservoir
        if not self._parts:
            return np.zeros(0, dtype=np.float64)
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0]

    def quantiles(self, qs) -> np.ndarray:
        """``numpy.quantile`` (linear interpolation) of the kept values."""
        with np.errstate(all="ignore"):
            return np.quantile(self.values(), qs)

    def median(self) -> float:
        with np.errstate(all="ignore"):  # the mean of the two middle values may overflow, as before
            return float(np.median(self.values()))


__all__ = ["DEFAULT_QUANTILE_CAP", "ExactMoments", "QuantileSample", "sqrt_ratio"]
