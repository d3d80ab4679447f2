"""``${name}`` expansion of Azkaban job properties, with depth, size and cycle limits.

Azkaban's ``PropsUtils.resolveProps`` replaces every ``${name}`` in every value by the (itself
resolved) value of ``name`` in the merged properties, recursively, and fails on a circular
reference. It sets no bound: a 1,000-key cycle or a 5,000-deep chain overflows a recursive
resolver, and ``p1=${p0}${p0}`` ... ``p40=${p39}${p39}`` (a 386-byte job) asks for 2**40 bytes.

This module is the one owner of that expansion (``runtime.resolve_props`` calls
:func:`expand_all` at run time; the migration calls :func:`check_expansion` to warn early):

* iterative (an explicit stack), so no depth of nesting raises ``RecursionError``;
* a circular reference is reported as such, with the chain of keys (shortened when long);
* a value that nests more than ``max_depth`` references deep is refused;
* a value whose expansion would exceed ``max_size`` characters, or a job whose values together
  would exceed ``max_total``, is refused *before* the string is built (sizes are added up from
  the already-resolved parts), so an exponential blow-up costs nothing.

Every failure is an :class:`ExpansionError` naming the job and the key. Pure: no Airflow import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MAX_TOTAL",
    "VARIABLE",
    "ExpansionError",
    "check_expansion",
    "expand_all",
    "merge_layers",
]

#: ``${name}``: the variable syntax the run time substitutes
VARIABLE = re.compile(r"\$\{([^${}]+)\}")
#: the most nested references one value may go through (real projects use a handful)
DEFAULT_MAX_DEPTH = 100
#: the most characters one expanded value may have (1 MiB; Linux caps one argument at 128 KiB)
DEFAULT_MAX_SIZE = 1 << 20
#: the most characters all expanded values of one job may have together (8 MiB)
DEFAULT_MAX_TOTAL = 8 << 20

_CHAIN_SHOWN = 6  # keys shown at each end of a long chain


class ExpansionError(ValueError):
    """A job property that cannot be expanded: undefined variable, cycle, too deep or too large.

    :param job: the job being resolved.
    :param key: the property whose value could not be expanded.
    :param reason: what went wrong.
    """

    def __init__(self, job: str, key: str, reason: str) -> None:
        self.job = job
        self.key = key
        self.reason = reason
        super().__init__(f"job {job!r}: property {key!r}: {reason}")


def merge_layers(layers: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Merge ``layers`` (lowest precedence first) into one ``str -> str`` map (None -> "")."""
    merged: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.items():
            merged[str(key)] = "" if value is None else str(value)
    return merged


def _chain(keys: Sequence[str]) -> str:
    if len(keys) <= 2 * _CHAIN_SHOWN + 1:
        return " -> ".join(keys)
    hidden = len(keys) - 2 * _CHAIN_SHOWN
    return " -> ".join([*keys[:_CHAIN_SHOWN], f"... ({hidden} more)", *keys[-_CHAIN_SHOWN:]])


def _short(value: str, limit: int = 120) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _parse(value: str) -> list[str | tuple[str]]:
    """Split a value into literal strings and ``(name,)`` references."""
    parts: list[str | tuple[str]] = []
    pos = 0
    for m in VARIABLE.finditer(value):
        if m.start() > pos:
            parts.append(value[pos : m.start()])
        parts.append((m.group(1),))
        pos = m.end()
    if pos < len(value):
        parts.append(value[pos:])
    return parts


def expand_all(
    layers: Sequence[Mapping[str, Any]],
    *,
    job: str,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_size: int = DEFAULT_MAX_SIZE,
    max_total: int = DEFAULT_MAX_TOTAL,
    keep_undefined: bool = False,
) -> dict[str, str]:
    """Merge ``layers`` (lowest precedence first) and expand ``${name}`` in every value.

    A reference is replaced by the referenced key's own expanded value in the merged map, as
    Azkaban's ``PropsUtils`` does.

    :param job: the job name, for messages.
    :param max_depth: the most nested references one value may go through.
    :param max_size: the most characters one expanded value may have.
    :param max_total: the most characters all expanded values may have together.
    :param keep_undefined: leave ``${name}`` of an undefined ``name`` as it is (the migration
        checks before the run-time values are known) instead of failing.
    :raises ExpansionError: an undefined variable, a circular reference, or a limit exceeded;
        the message names the job and the key.
    """
    merged = merge_layers(layers)
    resolved: dict[str, str] = {}
    depth: dict[str, int] = {}
    total = 0
    for root in merged:
        if root in resolved:
            continue
        # frames: [key, parts, index of the next part to look at]
        stack: list[list[Any]] = [[root, _parse(merged[root]), 0]]
        on_stack: dict[str, int] = {root: 0}
        while stack:
            frame = stack[-1]
            key, parts = frame[0], frame[1]
            pushed = False
            while frame[2] < len(parts):
                part = parts[frame[2]]
                frame[2] += 1
                if isinstance(part, str):
                    continue
                name = part[0]
                if name in resolved:
                    continue
                if name in on_stack:
                    cycle = [f[0] for f in stack[on_stack[name] :]] + [name]
                    raise ExpansionError(
                        job, key, f"circular property reference {_chain(cycle)} ({len(cycle) - 1} keys)"
                    )
                if name not in merged:
                    if keep_undefined:
                        continue
                    raise ExpansionError(
                        job,
                        key,
                        f"= {_short(merged[key])}: could not find a value for variable ${{{name}}}",
                    )
                on_stack[name] = len(stack)
                stack.append([name, _parse(merged[name]), 0])
                pushed = True
                break
            if pushed:
                continue
            # every reference of `key` is resolved: check the limits, then build the value
            size = 0
            d = 0
            deepest = None
            for part in parts:
                if isinstance(part, str):
                    size += len(part)
                elif part[0] in resolved:
                    size += len(resolved[part[0]])
                    if depth[part[0]] + 1 > d:
                        d, deepest = depth[part[0]] + 1, part[0]
                else:  # undefined, kept literally
                    size += len(part[0]) + 3
            if d > max_depth:
                path = [key]
                while deepest is not None and len(path) <= max_depth + 1:
                    path.append(deepest)
                    deepest = _deepest_ref(_parse(merged[deepest]), resolved, depth)
                raise ExpansionError(
                    job,
                    key,
                    f"expands through {d} nested ${{...}} references, more than the limit of "
                    f"{max_depth}: {_chain(path)}" + (f" (resolving {root!r})" if root != key else ""),
                )
            if size > max_size:
                raise ExpansionError(
                    job,
                    key,
                    f"= {_short(merged[key])} would expand to {size} characters, more than the limit "
                    f"of {max_size}" + (f" (resolving {root!r})" if root != key else ""),
                )
            total += size
            if total > max_total:
                raise ExpansionError(
                    job,
                    key,
                    f"the job's expanded properties would exceed {max_total} characters in total",
                )
            resolved[key] = "".join(
                p if isinstance(p, str) else resolved.get(p[0], "${" + p[0] + "}") for p in parts
            )
            depth[key] = d
            del on_stack[key]
            stack.pop()
    return {k: resolved[k] for k in merged}


def _deepest_ref(
    parts: list[str | tuple[str]], resolved: dict[str, str], depth: dict[str, int]
) -> str | None:
    best, best_d = None, -1
    for part in parts:
        if not isinstance(part, str) and part[0] in depth and depth[part[0]] > best_d:
            best, best_d = part[0], depth[part[0]]
    return best


def check_expansion(
    layers: Sequence[Mapping[str, Any]],
    *,
    job: str,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_size: int = DEFAULT_MAX_SIZE,
    max_total: int = DEFAULT_MAX_TOTAL,
) -> list[str]:
    """Warnings (never raises) for properties that would fail to expand at run time.

    For the migration: undefined variables are left alone (built-ins, flow parameters and
    upstream outputs are only known at run time; they are reported elsewhere), and the first
    cycle, too-deep chain or oversized expansion of the job is returned as a one-line message
    naming the job and the key.
    """
    try:
        expand_all(
            layers, job=job, max_depth=max_depth, max_size=max_size, max_total=max_total, keep_undefined=True
        )
    except ExpansionError as exc:
        return [str(exc)]
    return []
