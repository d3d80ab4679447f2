"""Finding transformers: built-ins, the ``airflow_ml_provider.transformers`` entry points, dotted paths.

A spec names a transformer either by its registered name (``standardize``, or a name a package
registers in its ``pyproject.toml``)::

    [project.entry-points."airflow_ml_provider.transformers"]
    winsorize = "my_package.features:Winsorize"

or by dotted path ``my_package.features:Winsorize``. Built-in names cannot be overridden.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .transformers import BUILTIN_TRANSFORMERS, Transformer

ENTRY_POINT_GROUP = "airflow_ml_provider.transformers"


class TransformerLookupError(LookupError):
    """No transformer of that name (the message lists the available ones)."""


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_transformers() -> list[str]:
    """Names usable in a spec: the built-ins and the registered entry points, sorted."""
    return sorted(set(BUILTIN_TRANSFORMERS) | set(_entry_points()))


def is_dotted_path(ref: str) -> bool:
    return ":" in ref


def _check_class(cls: object, ref: str) -> type[Transformer]:
    if not (isinstance(cls, type) and issubclass(cls, Transformer)):
        raise TransformerLookupError(
            f"{ref!r} is not a Transformer subclass (from airflow_ml_provider.ml.features import Transformer)"
        )
    if not cls.name or cls.version in (None, ""):
        raise TransformerLookupError(f"transformer {ref!r} must set the class attributes name and version")
    return cls


def get_transformer_class(ref: str) -> type[Transformer]:
    """Resolve a spec's transformer reference to its class."""
    if ref in BUILTIN_TRANSFORMERS:
        return BUILTIN_TRANSFORMERS[ref]
    if is_dotted_path(ref):
        module_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise TransformerLookupError(
                f"cannot import module {module_name!r} for transformer {ref!r}: {exc}"
            ) from None
        try:
            cls = getattr(module, attr)
        except AttributeError:
            raise TransformerLookupError(
                f"module {module_name!r} has no attribute {attr!r} (transformer {ref!r})"
            ) from None
        return _check_class(cls, ref)
    eps = _entry_points()
    if ref in eps:
        try:
            cls = eps[ref].load()  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the name
            raise TransformerLookupError(
                f"cannot load transformer {ref!r} from its entry point: {exc}"
            ) from None
        return _check_class(cls, ref)
    raise TransformerLookupError(
        f"unknown transformer {ref!r}; available: {', '.join(available_transformers())} "
        "(or a dotted path package.module:Class)"
    )
