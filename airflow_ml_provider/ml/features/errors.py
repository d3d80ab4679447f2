"""Errors raised by the feature library.

Every error is a :class:`FeatureError` (a :class:`ValueError`) and carries the feature at fault in
``.feature`` (``None`` when the problem is not about one feature), so callers such as the online
service can turn it into a precise client error.
"""

from __future__ import annotations


class FeatureError(ValueError):
    """Base class of all feature-library errors."""

    def __init__(self, message: str, *, feature: str | None = None) -> None:
        super().__init__(message)
        self.feature = feature


class FeatureSpecError(FeatureError):
    """A feature spec (YAML) or fitted spec (JSON) is invalid.

    The message names the source, line (when known), feature and field.
    """

    def __init__(
        self,
        message: str,
        *,
        feature: str | None = None,
        field: str | None = None,
        line: int | None = None,
        source: str | None = None,
    ) -> None:
        self.field = field
        self.line = line
        self.source = source
        self.detail = message
        where = []
        if source:
            where.append(str(source))
        if line is not None:
            where.append(f"line {line}")
        parts = []
        if where:
            parts.append(", ".join(where))
        if feature is not None:
            parts.append(f"feature {feature!r}")
        if field:
            parts.append(f"field {field!r}")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message, feature=feature)


class MissingFeatureError(FeatureError):
    """An input column (batch) or key (row, with ``on_missing: error``) is absent."""

    def __init__(self, message: str, *, feature: str | None = None, column: str | None = None) -> None:
        super().__init__(message, feature=feature)
        self.column = column


class FeatureTypeError(FeatureError):
    """An input value has the wrong type for its feature (e.g. text where a number is expected)."""

    def __init__(
        self, message: str, *, feature: str | None = None, column: str | None = None, value: object = None
    ) -> None:
        super().__init__(message, feature=feature)
        self.column = column
        self.value = value
