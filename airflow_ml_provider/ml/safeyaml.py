"""The one YAML loader of the project: PyYAML's safe loader with aliases and nesting bounded.

Every YAML file the project reads (feature specs, Azkaban ``.flow``/``.project`` files) goes through
:class:`SafeYamlLoader`. It refuses, *while composing* and so before anything is expanded:

* aliases whose expansion would add more than :attr:`SafeYamlLoader.max_alias_values` values to
  the document ("billion laughs": a few hundred bytes of nested ``&a``/``*a`` that expand to
  billions of values once a consumer walks, validates or serialises the data);
* an alias that refers to a value containing it (a document that expands forever);
* nesting deeper than :attr:`SafeYamlLoader.max_depth` (libyaml's composer recurses in C and
  crashes the interpreter on deeply nested input; PyYAML's pure-Python one hits RecursionError);
* integers longer than :data:`MAX_INT_DIGITS` digits (Python refuses to convert them, with an
  error that names no line).

Why a count and not a ban: PyYAML composes an alias as a *reference to the same node*, so the
composed tree stays as small as the text and construction (which memoises per node) is cheap; the
blow-up happens later, in whoever walks the data as a tree. The composer below keeps, for every
anchor, the number of values its node expands to (children's counts added bottom-up, an alias
counting its target's full size), so the bound is exact: a document that passes has at most
``(values written in the text) + max_alias_values`` values once every alias is expanded. Small,
ordinary uses of anchors (a shared transform chain, ``<<: *defaults``) keep working.

Errors are :class:`yaml.MarkedYAMLError` subclasses carrying the line and column (``problem_mark``),
so callers that already report PyYAML errors with their line report these the same way.

The events come from libyaml's C parser when it is available (fast, iterative) and are composed
by PyYAML's Python composer, extended here: the C composer cannot be extended (and recurses).
"""

from __future__ import annotations

from typing import Any

from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.resolver import Resolver

__all__ = [
    "MAX_ALIAS_VALUES",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "SafeYamlLoader",
    "YamlLimitError",
    "compose",
    "safe_load",
]

#: values that aliases may add to one document once expanded (the text's own values are free)
MAX_ALIAS_VALUES = 100_000
#: deepest nesting of sequences/mappings accepted
MAX_DEPTH = 100
#: longest integer accepted (Python's own limit for str -> int is 4300 digits)
MAX_INT_DIGITS = 4300

try:  # libyaml's event parser: much faster than the pure-Python one, and not recursive
    from yaml.cyaml import CParser as _Parser

    _PARSER_BASES: tuple[type, ...] = (_Parser,)
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _PyParser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _PARSER_BASES = (Reader, Scanner, _PyParser)


class YamlLimitError(ComposerError):
    """A document refused by a bound (aliases, nesting, integer size); ``problem_mark`` has the line."""


class _BoundedComposer(Composer):
    """PyYAML's composer, counting what aliases expand to and how deep the nesting goes."""

    max_alias_values = MAX_ALIAS_VALUES
    max_depth = MAX_DEPTH

    def __init__(self) -> None:
        super().__init__()
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._anchor_sizes: dict[str, int] = {}  # anchor -> values its node expands to
        self._open_sizes: list[int] = [0]  # running sizes of the collections being composed
        self._alias_values = 0

    def compose_document(self) -> Any:
        self._reset_counts()
        node = super().compose_document()
        self._reset_counts()
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            node = super().compose_node(parent, index)  # raises on an undefined alias
            size = self._anchor_sizes.get(event.anchor)
            if size is None:  # the anchored node is still open: the alias is inside it
                raise YamlLimitError(
                    None,
                    None,
                    f"recursive alias *{event.anchor}: it refers to a value that contains it (endless expansion)",
                    event.start_mark,
                )
            self._alias_values += size
            if self._alias_values > self.max_alias_values:
                raise YamlLimitError(
                    None,
                    None,
                    f"aliases expand past {self.max_alias_values} values in one document (at *{event.anchor}, "
                    f"whose value alone has {size}); write the values out or use fewer aliases",
                    event.start_mark,
                )
            self._open_sizes[-1] += size
            return node
        if len(self._open_sizes) > self.max_depth:
            raise YamlLimitError(
                None, None, f"nesting deeper than {self.max_depth} levels", event.start_mark
            )
        self._open_sizes.append(0)
        try:
            node = super().compose_node(parent, index)
        finally:
            size = 1 + self._open_sizes.pop()
        self._open_sizes[-1] += size
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._anchor_sizes[anchor] = size
        return node


class _BoundedConstructor(SafeConstructor):
    """PyYAML's safe constructor, refusing integers Python would refuse to convert (naming the line)."""

    def construct_yaml_int(self, node: Any) -> Any:
        value = str(node.value)
        if len(value) > MAX_INT_DIGITS:
            body = value.lstrip("+-")
            if body[:2].lower() in ("0x", "0o", "0b"):
                body = body[2:]
            digits = sum(ch.isalnum() for ch in body)  # '_' and ':' separators aside
            if digits > MAX_INT_DIGITS:
                raise ConstructorError(
                    None,
                    None,
                    f"a number with {digits} digits (the limit is {MAX_INT_DIGITS})",
                    node.start_mark,
                )
        return super().construct_yaml_int(node)


_BoundedConstructor.add_constructor("tag:yaml.org,2002:int", _BoundedConstructor.construct_yaml_int)


class SafeYamlLoader(_BoundedComposer, _BoundedConstructor, Resolver, *_PARSER_BASES):  # type: ignore[misc]
    """``yaml.SafeLoader`` with the bounds of this module. Subclass it to add constructors."""

    def __init__(self, stream: Any) -> None:
        if len(_PARSER_BASES) == 1:
            _PARSER_BASES[0].__init__(self, stream)
        else:  # pragma: no cover - the pure-Python reader, scanner and parser
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _PyParser.__init__(self)
        _BoundedComposer.__init__(self)
        _BoundedConstructor.__init__(self)
        Resolver.__init__(self)


def safe_load(text: str | bytes, *, loader: type[SafeYamlLoader] = SafeYamlLoader) -> Any:
    """Like ``yaml.safe_load``, with the bounds of this module (raises ``yaml.YAMLError``)."""
    inst = loader(text)
    try:
        return inst.get_single_data()
    finally:
        inst.dispose()


def compose(text: str | bytes) -> tuple[Any, SafeYamlLoader]:
    """The checked node tree of one document, and the loader (whose ``construct_object`` builds
    values from its nodes with the same bounds). Raises ``yaml.YAMLError``."""
    inst = SafeYamlLoader(text)
    try:
        return inst.get_single_node(), inst
    finally:
        inst.dispose()
