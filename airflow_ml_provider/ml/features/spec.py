"""The declarative feature spec (YAML) and its validation.

Example::

    version: 1
    label: clicked
    on_missing: default          # serving: an absent key is a missing value (or: error)
    item_features:
      - name: duration
        dtype: numeric
        transforms:
          - fill_missing: {strategy: median}
          - clip: {min: 0, max: 3600}
          - log1p
          - standardize
      - name: genre
        dtype: categorical
        transforms:
          - one_hot: {top_k: 50, min_frequency: 5}
    user_features:
      - name: tags
        dtype: list
        separator: "|"
        transforms: [multi_hot: {top_k: 100}]
    cross_features:
      - name: genre_x_country
        inputs: [genre, country]
        transforms: [hashed_cross: {buckets: 1000}]

Every error is a :class:`FeatureSpecError` naming the source, line, feature and field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import safeyaml
from .errors import FeatureSpecError
from .registry import TransformerLookupError, available_transformers, get_transformer_class
from .transformers import (
    CATEGORICAL,
    CROSS,
    LIST,
    NUMERIC,
    OUTPUT_KINDS,
    OptionError,
    Transformer,
    validate_option,
)

SPEC_VERSION = 1
SECTIONS = ("item_features", "user_features", "features", "cross_features")
GROUP_OF_SECTION = {
    "item_features": "item",
    "user_features": "user",
    "features": "other",
    "cross_features": "cross",
}
TOP_LEVEL_FIELDS = ("version", "label", "on_missing", "description", *SECTIONS)
FEATURE_FIELDS = ("name", "column", "dtype", "on_missing", "separator", "transforms", "description")
CROSS_FIELDS = ("name", "inputs", "on_missing", "transforms", "description")
ON_MISSING = ("default", "error")
DTYPE_ALIASES = {
    "numeric": NUMERIC,
    "number": NUMERIC,
    "float": NUMERIC,
    "int": NUMERIC,
    "categorical": CATEGORICAL,
    "category": CATEGORICAL,
    "string": CATEGORICAL,
    "str": CATEGORICAL,
    "list": LIST,
}

Path_ = tuple  # a path into the YAML document, e.g. ("item_features", 0, "transforms", 1, "clip")


# ---------------------------------------------------------------------------------------------
# YAML with line numbers
# ---------------------------------------------------------------------------------------------


def _load_yaml_with_lines(text: str, source: str | None) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML into plain Python data plus a map from document path to 1-based line.

    Read with the project's bounded loader (:mod:`airflow_ml_provider.ml.safeyaml`): aliases that
    would expand past its limit, self-referring aliases, deep nesting and oversized integers are
    refused while composing, before this walk expands anything."""
    try:
        node, constructor = safeyaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and cmark is not None and mark is not None and cmark.line != mark.line:
            problem += f" ({context} started on line {cmark.line + 1})"
        raise FeatureSpecError(
            f"invalid YAML: {problem}", line=mark.line + 1 if mark else None, source=source
        ) from None
    if node is None:
        return None, {}
    lines: dict[Path_, int] = {}

    def walk(n: yaml.Node, path: Path_) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            constructor.flatten_mapping(n)
            out: dict[Any, Any] = {}
            for k, v in n.value:
                key = constructor.construct_object(k, deep=True)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    raise FeatureSpecError(
                        f"mapping keys must be plain values, got {key!r}",
                        line=k.start_mark.line + 1,
                        source=source,
                    )
                if key in out:
                    raise FeatureSpecError(
                        f"duplicate key {key!r}", line=k.start_mark.line + 1, source=source
                    )
                lines[path + (key,)] = k.start_mark.line + 1
                out[key] = walk(v, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [walk(item, path + (i,)) for i, item in enumerate(n.value)]
        try:
            return constructor.construct_object(n, deep=True)
        except yaml.YAMLError as exc:
            raise FeatureSpecError(
                f"invalid value: {getattr(exc, 'problem', None) or exc}", line=n.start_mark.line + 1, source=source
            ) from None

    return walk(node, ()), lines


# ---------------------------------------------------------------------------------------------
# The spec model
# ---------------------------------------------------------------------------------------------


@dataclass
class TransformDef:
    """One step of a feature's chain as written in the spec."""

    ref: str  # registered name or dotted path, as written
    options: dict[str, Any]  # as written (no defaults filled in)
    cls: type[Transformer]
    resolved: dict[str, Any]  # validated, defaults filled in
    input_kind: str
    path: Path_ = ()

    def create(self, feature: str) -> Transformer:
        return self.cls(feature, self.input_kind, dict(self.resolved))


@dataclass
class FeatureDef:
    """One feature: where its input comes from, its dtype and its chain of transformers."""

    name: str
    group: str  # item | user | other | cross
    dtype: str  # numeric | categorical | list | cross
    columns: list[str]  # the input column, or the crossed columns
    on_missing: str | None  # None = the spec's default
    separator: str
    transforms: list[TransformDef]
    description: str | None = None
    path: Path_ = ()
    output_kind: str = NUMERIC

    @property
    def column(self) -> str:
        return self.columns[0]


@dataclass
class FeatureSpec:
    """A validated feature spec. Build it with :meth:`from_yaml` or :meth:`from_dict`."""

    features: list[FeatureDef]
    label: str | None = None
    on_missing: str = "default"
    description: str | None = None
    source: str | None = None
    lines: dict[Path_, int] = field(default_factory=dict, repr=False)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike, *, source: str | None = None) -> FeatureSpec:
        """Load a spec from a YAML file path or from YAML text (``source`` names it in errors)."""
        if isinstance(path_or_text, os.PathLike) or (
            isinstance(path_or_text, str)
            and "\n" not in path_or_text
            and (path_or_text.strip().endswith((".yaml", ".yml")) or os.path.isfile(path_or_text))
        ):
            p = Path(path_or_text)
            try:
                text = p.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise FeatureSpecError("spec file not found", source=str(p)) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise FeatureSpecError(f"cannot read the spec: {exc}", source=str(p)) from None
            source = str(p)
        elif isinstance(path_or_text, str):
            text = path_or_text
            if source is not None:
                data, lines = _load_yaml_with_lines(text, source)
                return cls._parse(data, lines, source)
        else:
            raise TypeError(f"from_yaml expects a path or YAML text, got {type(path_or_text).__name__}")
        data, lines = _load_yaml_with_lines(text, source)
        return cls._parse(data, lines, source)

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None) -> FeatureSpec:
        """Build a spec from already parsed data (the same shape as the YAML)."""
        return cls._parse(data, {}, source)

    # -- views --------------------------------------------------------------------------------
    @property
    def input_columns(self) -> list[str]:
        """The input columns every row must provide, in first-use order."""
        seen: dict[str, None] = {}
        for f in self.features:
            for c in f.columns:
                seen.setdefault(c, None)
        return list(seen)

    def feature(self, name: str) -> FeatureDef:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict:
        """The spec in its normal form (valid input for :meth:`from_dict`)."""
        out: dict[str, Any] = {"version": SPEC_VERSION, "on_missing": self.on_missing}
        if self.label is not None:
            out["label"] = self.label
        if self.description is not None:
            out["description"] = self.description
        for section, group in GROUP_OF_SECTION.items():
            items = []
            for f in self.features:
                if f.group != group:
                    continue
                d: dict[str, Any] = {"name": f.name}
                if f.dtype == CROSS:
                    d["inputs"] = list(f.columns)
                else:
                    d["column"] = f.column
                    d["dtype"] = f.dtype
                    if f.dtype == LIST:
                        d["separator"] = f.separator
                if f.on_missing is not None:
                    d["on_missing"] = f.on_missing
                if f.description is not None:
                    d["description"] = f.description
                d["transforms"] = [{t.ref: dict(t.options)} for t in f.transforms]
                items.append(d)
            if items:
                out[section] = items
        return out

    # -- errors -------------------------------------------------------------------------------
    def line_of(self, path: Path_) -> int | None:
        return _line_of(self.lines, path)

    # -- parsing ------------------------------------------------------------------------------
    @classmethod
    def _parse(cls, data: Any, lines: dict[Path_, int], source: str | None) -> FeatureSpec:
        def err(message: str, path: Path_ = (), feature: str | None = None, fld: str | None = None):
            return FeatureSpecError(
                message, feature=feature, field=fld, line=_line_of(lines, path), source=source
            )

        if isinstance(data, str) and "\n" not in data.strip():
            raise err(
                f"a feature spec must be a mapping; got the text {data!r} (a spec file that does not exist?)"
            )
        if not isinstance(data, dict):
            raise err(f"a feature spec must be a mapping, got {type(data).__name__}")
        for key in data:
            if key not in TOP_LEVEL_FIELDS:
                raise err(
                    f"unknown top-level field {key!r}; allowed: {', '.join(TOP_LEVEL_FIELDS)}",
                    (key,),
                    fld=str(key),
                )
        version = data.get("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise err(
                f"unsupported spec version {version!r} (this library reads version {SPEC_VERSION})",
                ("version",),
                fld="version",
            )
        on_missing = data.get("on_missing", "default")
        if on_missing not in ON_MISSING:
            raise err(
                f"expected one of {', '.join(ON_MISSING)}, got {on_missing!r}",
                ("on_missing",),
                fld="on_missing",
            )
        label = data.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise err(f"expected a column name, got {label!r}", ("label",), fld="label")
        description = data.get("description")

        features: list[FeatureDef] = []
        names: dict[str, Path_] = {}
        for section in SECTIONS:
            items = data.get(section)
            if items is None:
                continue
            if not isinstance(items, list):
                raise err(f"expected a list of features, got {type(items).__name__}", (section,), fld=section)
            for i, item in enumerate(items):
                path = (section, i)
                fdef = _parse_feature(item, path, GROUP_OF_SECTION[section], err)
                if fdef.name in names:
                    raise err(
                        f"duplicate feature name (first defined at line {_line_of(lines, names[fdef.name])})"
                        if _line_of(lines, names[fdef.name])
                        else "duplicate feature name",
                        path + ("name",),
                        feature=fdef.name,
                        fld="name",
                    )
                names[fdef.name] = path
                features.append(fdef)
        if not features:
            raise err(f"the spec defines no features (use {', '.join(SECTIONS)})")
        if label is not None:
            for f in features:
                if label in f.columns:
                    raise err(
                        f"the label column {label!r} is also an input of this feature",
                        f.path,
                        feature=f.name,
                        fld="inputs" if f.dtype == CROSS else "column",
                    )
        return cls(
            features=features,
            label=label,
            on_missing=on_missing,
            description=description,
            source=source,
            lines=lines,
        )


def _line_of(lines: dict[Path_, int], path: Path_) -> int | None:
    p = tuple(path)
    while True:
        if p in lines:
            return lines[p]
        if not p:
            return None
        p = p[:-1]


def _parse_feature(item: Any, path: Path_, group: str, err) -> FeatureDef:
    is_cross = group == "cross"
    if not isinstance(item, dict):
        raise err(f"a feature must be a mapping with at least 'name', got {item!r}", path)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise err(f"every feature needs a name (text), got {name!r}", path + ("name",), fld="name")
    allowed = CROSS_FIELDS if is_cross else FEATURE_FIELDS
    for key in item:
        if key not in allowed:
            raise err(
                f"unknown field; allowed: {', '.join(allowed)}", path + (key,), feature=name, fld=str(key)
            )

    on_missing = item.get("on_missing")
    if on_missing is not None and on_missing not in ON_MISSING:
        raise err(
            f"expected one of {', '.join(ON_MISSING)}, got {on_missing!r}",
            path + ("on_missing",),
            feature=name,
            fld="on_missing",
        )
    description = item.get("description")
    separator = "|"

    raw_transforms = item.get("transforms", [])
    if raw_transforms is None:
        raw_transforms = []
    if not isinstance(raw_transforms, list):
        raw_transforms = [raw_transforms]
        tpath_base = path + ("transforms",)
    else:
        tpath_base = path + ("transforms",)
    steps: list[tuple[str, dict, Path_]] = []
    for j, step in enumerate(raw_transforms):
        spath = tpath_base + (j,)
        fld = f"transforms[{j}]"
        if isinstance(step, str):
            steps.append((step, {}, spath))
        elif isinstance(step, dict) and len(step) == 1:
            ((tname, opts),) = step.items()
            if not isinstance(tname, str):
                raise err(f"a transformer name must be text, got {tname!r}", spath, feature=name, fld=fld)
            if opts is None:
                opts = {}
            if not isinstance(opts, dict):
                raise err(
                    f"the options of {tname!r} must be a mapping (e.g. {{{tname}: {{option: value}}}}), got {opts!r}",
                    spath + (tname,),
                    feature=name,
                    fld=f"{fld}.{tname}",
                )
            steps.append((tname, opts, spath + (tname,)))
        else:
            raise err(
                "each transform is a name (e.g. log1p) or a one-key mapping (e.g. {clip: {min: 0}}), "
                f"got {step!r}",
                spath,
                feature=name,
                fld=fld,
            )

    if is_cross:
        inputs = item.get("inputs")
        if (
            not isinstance(inputs, list)
            or len(inputs) < 2
            or not all(isinstance(c, str) and c for c in inputs)
        ):
            raise err(
                f"a cross needs 'inputs': a list of two or more column names, got {inputs!r}",
                path + ("inputs",),
                feature=name,
                fld="inputs",
            )
        if len(set(inputs)) != len(inputs):
            raise err(f"inputs repeat a column: {inputs}", path + ("inputs",), feature=name, fld="inputs")
        columns = list(inputs)
        dtype = CROSS
        if not steps:
            raise err(
                "a cross needs a transform, e.g. transforms: [hashed_cross: {buckets: 1000}]",
                path + ("transforms",),
                feature=name,
                fld="transforms",
            )
    else:
        column = item.get("column", name)
        if not isinstance(column, str) or not column:
            raise err(
                f"expected a column name, got {column!r}", path + ("column",), feature=name, fld="column"
            )
        columns = [column]
        raw_dtype = item.get("dtype")
        if raw_dtype is None:
            dtype = _infer_dtype(steps)
        else:
            dtype = DTYPE_ALIASES.get(str(raw_dtype).lower()) if isinstance(raw_dtype, str) else None
            if dtype is None:
                raise err(
                    f"expected one of numeric, categorical, list, got {raw_dtype!r}",
                    path + ("dtype",),
                    feature=name,
                    fld="dtype",
                )
        if "separator" in item:
            separator = item["separator"]
            if dtype != LIST:
                raise err(
                    "separator is only for dtype list", path + ("separator",), feature=name, fld="separator"
                )
            if not isinstance(separator, str) or not separator:
                raise err(
                    f"expected non-empty text, got {separator!r}",
                    path + ("separator",),
                    feature=name,
                    fld="separator",
                )
        if not steps and dtype == NUMERIC:
            steps = [("passthrough", {}, path + ("transforms",))]

    transforms: list[TransformDef] = []
    kind = dtype
    for j, (tname, opts, spath) in enumerate(steps):
        fld = f"transforms[{j}].{tname}"
        if kind not in (NUMERIC, CATEGORICAL, LIST, CROSS):
            prev = transforms[-1].ref
            raise err(
                f"{prev!r} produces the final {kind} output; no transform can follow it",
                spath,
                feature=name,
                fld=f"transforms[{j}]",
            )
        try:
            tcls = get_transformer_class(tname)
        except TransformerLookupError as exc:
            raise err(str(exc), spath, feature=name, fld=f"transforms[{j}]") from None
        if kind not in tcls.input_kinds:
            raise err(
                f"transformer {tname!r} takes {' or '.join(tcls.input_kinds)} input, but the value here is {kind}"
                + (f" (set dtype: {tcls.input_kinds[0]})" if j == 0 and kind != CROSS else ""),
                spath,
                feature=name,
                fld=f"transforms[{j}]",
            )
        resolved: dict[str, Any] = {}
        for oname in opts:
            if oname not in tcls.options:
                allowed_opts = ", ".join(tcls.options) or "none"
                raise err(
                    f"unknown option {oname!r} for {tname!r}; allowed: {allowed_opts}",
                    spath + (oname,),
                    feature=name,
                    fld=f"{fld}.{oname}",
                )
        for oname, odef in tcls.options.items():
            if oname in opts and opts[oname] is not None:
                try:
                    resolved[oname] = validate_option(oname, odef, opts[oname])
                except OptionError as exc:
                    raise err(exc.message, spath + (oname,), feature=name, fld=f"{fld}.{oname}") from None
            elif odef.required:
                raise err(f"option {oname!r} is required", spath, feature=name, fld=f"{fld}.{oname}")
            else:
                resolved[oname] = odef.default
        tdef = TransformDef(
            ref=tname, options=dict(opts), cls=tcls, resolved=resolved, input_kind=kind, path=spath
        )
        try:
            instance = tdef.create(name)
        except OptionError as exc:
            ofld = f"{fld}.{exc.option}" if exc.option else fld
            opath = spath + (exc.option,) if exc.option else spath
            raise err(exc.message, opath, feature=name, fld=ofld) from None
        except Exception as exc:  # noqa: BLE001 - a custom transformer's own validation
            raise err(f"{type(exc).__name__}: {exc}", spath, feature=name, fld=fld) from None
        kind = instance.output_kind
        transforms.append(tdef)

    if kind not in OUTPUT_KINDS:
        hint = {
            CATEGORICAL: "end a categorical chain with vocabulary, one_hot or hash_bucket",
            LIST: "end a list chain with multi_hot",
            CROSS: "a cross needs hashed_cross",
        }.get(kind, "")
        raise err(
            f"the chain ends with a {kind} value, not numbers; {hint}",
            path + ("transforms",),
            feature=name,
            fld="transforms",
        )
    return FeatureDef(
        name=name,
        group=group,
        dtype=dtype,
        columns=columns,
        on_missing=on_missing,
        separator=separator,
        transforms=transforms,
        description=description,
        path=path,
        output_kind=kind,
    )


def _infer_dtype(steps: list[tuple[str, dict, Path_]]) -> str:
    """With no ``dtype``, take the first transformer's input kind (numeric when it accepts numbers)."""
    if not steps:
        return NUMERIC
    try:
        tcls = get_transformer_class(steps[0][0])
    except TransformerLookupError:
        return NUMERIC  # the unknown name is reported by the chain check
    kinds = [k for k in tcls.input_kinds if k != CROSS]
    if not kinds or NUMERIC in kinds:
        return NUMERIC
    return kinds[0]


__all__ = ["FeatureDef", "FeatureSpec", "TransformDef", "available_transformers"]
