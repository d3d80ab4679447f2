"""Model quality gates: minimum (or maximum) metric thresholds and champion/challenger comparison.

Pure logic: ``EvaluateOperator`` reads the thresholds (from Airflow Variables / the dictionary
table) and the champion's metrics (from the model registry) and calls :func:`evaluate_gates`.

Thresholds
    ``minimums`` maps a metric name to a number, optionally with an operator suffix:

    * ``"auc": 0.7`` or ``"auc>=": 0.7`` -- the metric must be at least 0.7;
    * ``"logloss<=": 0.5`` -- the metric must be at most 0.5 (loss-like metrics);
    * ``"auc>": 0.7`` / ``"logloss<": 0.5`` -- strict versions.

    ``maximums`` (optional) maps a metric name to an upper bound (same as the ``<=`` suffix).
    A bare name of a loss-like metric (``logloss``, ``rmse``, ``mae``, ``mape``, ...) in
    ``minimums`` is rejected as ambiguous, so "logloss: 0.5" can never silently mean
    "logloss must be at least 0.5". Values may be numbers or numeric strings (Airflow Variables
    are strings); the whole mapping may also be given as a JSON string.

Champion/challenger
    With ``champion_metrics`` (the currently published model's metrics -- ``EvaluateOperator``
    re-scores the champion on the challenger's own test rows) the challenger must improve
    ``compare_on`` by MORE than ``min_improvement`` (absolute, in the metric's unit):
    ``challenger - champion > min_improvement`` for higher-is-better metrics,
    ``champion - challenger > min_improvement`` for loss-like ones. With the default
    ``min_improvement = 0`` the challenger must be strictly better: a tie (an identical re-run)
    does not publish a new version. ``allow_tie=True`` (the ``publish_on_tie`` setting) turns the
    ``>`` into ``>=``. A negative ``min_improvement`` is a tolerance. No champion (first model) or a
    champion that lacks the metric skips the comparison, with a note in ``checks``.

A metric that is missing from ``metrics`` or is ``None`` (e.g. AUC on a one-class test set) fails
its gate with a reason naming it: a typo in a threshold name must not publish silently.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: metrics where lower is better (used for the champion comparison and to reject bare minimums)
LOWER_IS_BETTER = frozenset(
    {"logloss", "rmse", "mae", "mape", "mse", "brier", "error", "loss", "rmsle", "mphe"}
)

_KEY = re.compile(r"^\s*([A-Za-z_][\w.\-@]*)\s*(>=|<=|>|<)?\s*$")


class GateConfigError(ValueError):
    """A threshold specification is malformed (names the key and the problem)."""


@dataclass
class GateResult:
    """Outcome of :func:`evaluate_gates`.

    :param passed: True when every gate passed.
    :param reasons: human-readable reason for every FAILED gate (empty when passed).
    :param checks: one line per check performed, passed or failed, for the task log.
    """

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "checks": list(self.checks)}

    def __bool__(self) -> bool:
        return self.passed


def is_lower_better(metric: str) -> bool:
    """True for loss-like metrics (``logloss``, ``rmse``, ... also ``valid-logloss`` style names)."""
    base = metric.rsplit("-", 1)[-1].split("@", 1)[0].lower()
    return base in LOWER_IS_BETTER


def _fmt(v: float) -> str:
    return format(float(v), ".4g")


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise GateConfigError(f"{where}: {key!r} must be a number, got {value!r}")
    try:
        f = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise GateConfigError(f"{where}: {key!r} must be a number, got {value!r}") from None
    if math.isnan(f):
        raise GateConfigError(f"{where}: {key!r} is NaN")
    return f


def _load_mapping(where: str, spec: Any) -> Mapping[str, Any]:
    if spec is None:
        return {}
    if isinstance(spec, (str, bytes)):
        text = spec.decode() if isinstance(spec, bytes) else spec
        if not text.strip():
            return {}
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise GateConfigError(f"{where}: not valid JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(spec, Mapping):
        raise GateConfigError(f"{where}: expected a mapping of metric -> number, got {type(spec).__name__}")
    return spec


def parse_thresholds(minimums: Any = None, maximums: Any = None) -> list[tuple[str, str, float]]:
    """Normalise threshold specs into ``[(metric, op, value)]`` with op in ``>=, >, <=, <``.

    :raises GateConfigError: naming the offending key.
    """
    rules: list[tuple[str, str, float]] = []
    for key, value in _load_mapping("minimums", minimums).items():
        m = _KEY.match(str(key))
        if not m:
            raise GateConfigError(
                f"minimums: cannot parse key {key!r}; use 'metric', 'metric>=' or 'metric<='"
            )
        name, op = m.group(1), m.group(2)
        if op is None:
            if is_lower_better(name):
                raise GateConfigError(
                    f"minimums: {name!r} is a loss (lower is better), so a bare minimum is ambiguous; "
                    f"write '{name}<=' or put it in maximums"
                )
            op = ">="
        rules.append((name, op, _number("minimums", str(key), value)))
    for key, value in _load_mapping("maximums", maximums).items():
        m = _KEY.match(str(key))
        if not m or m.group(2) not in (None, "<=", "<"):
            raise GateConfigError(f"maximums: cannot parse key {key!r}; use 'metric' or 'metric<'")
        rules.append((m.group(1), m.group(2) or "<=", _number("maximums", str(key), value)))
    return rules


_OPS = {
    ">=": (lambda a, b: a >= b, "<", "minimum"),
    ">": (lambda a, b: a > b, "<=", "strict minimum"),
    "<=": (lambda a, b: a <= b, ">", "maximum"),
    "<": (lambda a, b: a < b, ">=", "strict maximum"),
}


def _metric(metrics: Mapping[str, Any], name: str) -> float | None:
    v = metrics.get(name)
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def evaluate_gates(
    metrics: Mapping[str, Any],
    minimums: Any = None,
    champion_metrics: Mapping[str, Any] | None = None,
    compare_on: str | None = None,
    min_improvement: float = 0.0,
    *,
    maximums: Any = None,
    higher_is_better: bool | None = None,
    allow_tie: bool = False,
) -> GateResult:
    """Check ``metrics`` against thresholds and against the champion.

    :param metrics: the challenger's metrics (e.g. from :func:`airflow_ml_provider.ml.metrics.compute_metrics`).
    :param minimums: thresholds, ``{"auc": 0.7, "logloss<=": 0.5}`` or the same as JSON text.
    :param champion_metrics: metrics of the currently published model, or None (no champion).
    :param compare_on: metric for the champion comparison; default ``auc`` for binary metrics,
        ``rmse`` for regression (from ``metrics["task"]``).
    :param min_improvement: absolute improvement the challenger needs over the champion.
    :param maximums: upper bounds, ``{"logloss": 0.5}``.
    :param higher_is_better: direction of ``compare_on``; default: inferred from its name.
    :param allow_tie: an improvement of exactly ``min_improvement`` (by default: a tie) passes.
    :returns: :class:`GateResult`.
    """
    reasons: list[str] = []
    checks: list[str] = []
    for name, op, bound in parse_thresholds(minimums, maximums):
        value = _metric(metrics, name)
        fn, neg, label = _OPS[op]
        if value is None:
            if name not in metrics:
                avail = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float))))
                msg = f"{name} is not among the metrics (available: {avail}); gate '{name}{op}{_fmt(bound)}' fails"
            else:
                msg = f"{name} is undefined for this evaluation; gate '{name}{op}{_fmt(bound)}' fails"
            reasons.append(msg)
            checks.append("FAIL " + msg)
        elif fn(value, bound):
            checks.append(f"ok   {name} {_fmt(value)} {op} {label} {_fmt(bound)}")
        else:
            msg = f"{name} {_fmt(value)} {neg} {label} {_fmt(bound)}"
            reasons.append(msg)
            checks.append("FAIL " + msg)

    if compare_on is None:
        compare_on = "rmse" if metrics.get("task") == "regression" else "auc"
    min_improvement = _number("min_improvement", "min_improvement", min_improvement)
    if champion_metrics is None:
        checks.append(f"note no champion to compare with; {compare_on} comparison skipped")
    else:
        higher = (not is_lower_better(compare_on)) if higher_is_better is None else bool(higher_is_better)
        chal = _metric(metrics, compare_on)
        champ = _metric(champion_metrics, compare_on)
        if chal is None:
            msg = f"challenger has no {compare_on} to compare with the champion"
            reasons.append(msg)
            checks.append("FAIL " + msg)
        elif champ is None:
            checks.append(f"note champion has no {compare_on}; comparison skipped")
        else:
            improvement = (chal - champ) if higher else (champ - chal)
            need = "" if min_improvement == 0 else f" by {'at least' if allow_tie else 'more than'} {_fmt(min_improvement)}"
            if improvement > min_improvement or (allow_tie and improvement == min_improvement):
                checks.append(
                    f"ok   challenger {compare_on} {_fmt(chal)} vs champion {_fmt(champ)}"
                    f" (improvement {_fmt(improvement)}{', lower is better' if not higher else ''})"
                )
            else:
                verb = "does not beat" if improvement < 0 or min_improvement == 0 else "does not improve on"
                if improvement == 0 and min_improvement == 0:
                    verb = "ties"  # equal quality: no new version unless ties are allowed
                msg = f"challenger {compare_on} {_fmt(chal)} {verb} champion {_fmt(champ)}{need}"
                if improvement == min_improvement:
                    msg += " (a tie does not publish; set publish_on_tie to allow it)"
                if not higher:
                    msg += " (lower is better)"
                reasons.append(msg)
                checks.append("FAIL " + msg)
    return GateResult(passed=not reasons, reasons=reasons, checks=checks)
