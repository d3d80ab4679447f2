"""``airflow-ml dictionary``: manage the dictionary table that serves Airflow Variables.

Subcommands: ``init``, ``list``, ``get``, ``set``, ``delete``, ``history``, ``import``, ``export``.

The database is the one the secrets backend serves, resolved by :mod:`airflow_ml_provider.ml.settings`
(docs/configuration.md): ``--sql-alchemy-conn`` (and ``--table`` / ``--key-prefix``), else the
DictionaryTableBackend's kwargs in Airflow's configuration (``[workers] secrets_backend_kwargs`` when
``[workers] secrets_backend`` is that backend, else ``[secrets] backend_kwargs``; per-key
``AIRFLOW__..._KWARG__<NAME>`` variables override them, as in Airflow), else ``[ml] dictionary_conn``,
else ``$AIRFLOW_ML_DICTIONARY``, else -- when the backend is enabled -- ``$AIRFLOW_ML_HOME/dictionary.db``.

Keys given on the command line are Variable names: with a ``key_prefix`` configured, ``set x 1``
writes the row ``<key_prefix>x``, which ``Variable.get("x")`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from airflow_ml_provider.cli import CLIError
from airflow_ml_provider.cli.args import int_arg

BACKEND_CLASS = "airflow_ml_provider.secrets.dictionary.DictionaryTableBackend"
MAX_HISTORY_LIMIT = 2**31 - 1  # what every database takes in LIMIT


# --------------------------------------------------------------------------------------------
# parser


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("database (default: read from Airflow's configuration)")
    group.add_argument(
        "--sql-alchemy-conn",
        metavar="URL",
        help="SQLAlchemy URL of the dictionary database; overrides Airflow's configuration",
    )
    group.add_argument("--table", help="dictionary table name (default: configured, else ml_dictionary)")
    group.add_argument(
        "--key-prefix",
        help="key prefix (default: the configured key_prefix); '' for none, i.e. raw row keys",
    )

    parser = subparsers.add_parser(
        "dictionary",
        help="manage the dictionary table (Airflow Variables kept in MySQL/SQLite)",
        description="Manage the dictionary table that DictionaryTableBackend serves as Airflow Variables.",
    )
    sub = parser.add_subparsers(dest="dictionary_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    p = sub.add_parser("init", parents=[common], help="create the dictionary and history tables")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("list", parents=[common], help="list keys (with --values, their values too)")
    p.add_argument("--prefix", default=None, help="only keys starting with this")
    p.add_argument("--values", action="store_true", help="show values too")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("get", parents=[common], help="print the value of one key")
    p.add_argument("key")
    p.add_argument("--json", action="store_true", help="print the whole entry as JSON")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("set", parents=[common], help="create or change one key")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--description", default=None, help="description (kept as it is when omitted)")
    p.add_argument("--by", default=None, help="who made the change (default: the OS user)")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("delete", parents=[common], help="delete one key")
    p.add_argument("key")
    p.add_argument("--by", default=None, help="who made the change (default: the OS user)")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("history", parents=[common], help="show the change history (newest first)")
    p.add_argument("key", nargs="?", default=None)
    p.add_argument("--limit", default=50, help="at most this many changes (default 50; 0 = all)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser(
        "import", parents=[common], help="import keys from a .properties or JSON file (one transaction)"
    )
    p.add_argument("file", help='a Java .properties file, or JSON (an export, or {"key": value})')
    p.add_argument(
        "--format", choices=("properties", "json"), default=None, help="default: from the file extension"
    )
    p.add_argument(
        "--encoding",
        default="iso-8859-1",
        help="encoding of a .properties file (default iso-8859-1, as Java; \\uXXXX escapes always work)",
    )
    p.add_argument("--by", default=None, help="who made the change (default: the OS user)")
    p.add_argument("--dry-run", action="store_true", help="validate and report, change nothing")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", parents=[common], help="export keys as JSON that `import` reads back")
    p.add_argument("-o", "--output", default=None, help="write to this file (atomically) instead of stdout")
    p.set_defaults(func=cmd_export)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# --------------------------------------------------------------------------------------------
# configuration


def _open(args: argparse.Namespace):
    """(store, key_prefix) for the command's database (ml/settings.py decides which)."""
    from airflow_ml_provider.dictionary_store import DictionaryError, DictionaryStore
    from airflow_ml_provider.ml import settings

    try:
        resolved = settings.resolve(
            dictionary=args.sql_alchemy_conn or None, dictionary_table=args.table or None,
            dictionary_key_prefix=args.key_prefix,
        )
        location = settings.dictionary_location(resolved)
    except settings.SettingsError as exc:
        raise CLIError(str(exc)) from None
    if location is None:
        raise CLIError(
            "no dictionary database configured: pass --sql-alchemy-conn, set [ml] dictionary_conn "
            "(AIRFLOW__ML__DICTIONARY_CONN) or $AIRFLOW_ML_DICTIONARY, or enable "
            f"{BACKEND_CLASS} in [workers] secrets_backend / [secrets] backend"
        )
    try:
        store = DictionaryStore(location.url, location.table)
        store.create_tables()
    except DictionaryError as exc:
        raise CLIError(str(exc)) from None
    return store, location.key_prefix


def _full_key(prefix: str, key: str) -> str:
    from airflow_ml_provider.dictionary_store import DictionaryValidationError, validate_key

    try:
        return validate_key(prefix + key)
    except DictionaryValidationError as exc:
        raise CLIError(str(exc)) from None


def _run(fn, *a, **kw):
    from airflow_ml_provider.dictionary_store import DictionaryError

    try:
        return fn(*a, **kw)
    except DictionaryError as exc:
        raise CLIError(str(exc)) from None


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


# --------------------------------------------------------------------------------------------
# commands


def cmd_init(args: argparse.Namespace) -> int:
    store, _ = _open(args)
    _out(f"dictionary tables {store.table_name}, {store.table_name}_history ready in {store.database}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store, prefix = _open(args)
    entries = _run(store.list, prefix + (args.prefix or "") or None)
    rows = [
        {
            "key": e.key[len(prefix) :],
            **({"value": e.value} if args.values else {}),
            "description": e.description,
            "updated_at": e.updated_at.isoformat(timespec="seconds") if e.updated_at else None,
            "updated_by": e.updated_by,
        }
        for e in entries
    ]
    if args.json:
        _out(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("(no keys)", file=sys.stderr)
        return 0
    columns = list(rows[0])
    cells = [[_cell(r[c]) for c in columns] for r in rows]
    widths = [min(60, max(len(c), *(len(row[i]) for row in cells))) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    _out("\n".join(lines))
    return 0


def _cell(value: Any) -> str:
    text = "" if value is None else str(value).replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= 60 else text[:57] + "..."


def cmd_get(args: argparse.Namespace) -> int:
    store, prefix = _open(args)
    full = _full_key(prefix, args.key)
    entry = _run(store.get, full)
    if entry is None:
        raise CLIError(
            f"key {args.key!r} not found in dictionary table {store.table_name!r} ({store.database})"
        )
    if args.json:
        doc = entry.to_dict()
        doc["key"] = args.key
        _out(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        _out(entry.value)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from airflow_ml_provider.dictionary_store import KEEP

    store, prefix = _open(args)
    full = _full_key(prefix, args.key)
    description = KEEP if args.description is None else args.description
    change = _run(store.set, full, args.value, description=description, updated_by=args.by)
    _out(f"{change.action} {args.key}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    store, prefix = _open(args)
    full = _full_key(prefix, args.key)
    deleted = _run(store.delete, full, updated_by=args.by)
    if deleted is None:
        raise CLIError(
            f"key {args.key!r} not found in dictionary table {store.table_name!r} ({store.database})"
        )
    _out(f"deleted {args.key}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    limit = int_arg(args.limit, "--limit", minimum=0, maximum=MAX_HISTORY_LIMIT) or None
    store, prefix = _open(args)
    if args.key is not None:
        records = _run(store.history, _full_key(prefix, args.key), limit=limit)
    else:
        records = _run(store.history, prefix=prefix or None, limit=limit)
    docs = []
    for r in records:
        d = r.to_dict()
        d["key"] = r.key[len(prefix) :]
        docs.append(d)
    if args.json:
        _out(json.dumps(docs, indent=2, ensure_ascii=False))
        return 0
    if not docs:
        print("(no changes)", file=sys.stderr)
        return 0
    for d in docs:
        when = (d["changed_at"] or "")[:19]
        if d["action"] == "create":
            change = f"= {_cell(d['new_value'])}"
        elif d["action"] == "delete":
            change = f"(was {_cell(d['old_value'])})"
        else:
            change = f"{_cell(d['old_value'])} -> {_cell(d['new_value'])}"
            if d["old_description"] != d["new_description"]:
                change += f"  [description: {_cell(d['new_description'])}]"
        _out(f"{when}  {d['changed_by'] or '?':<12}  {d['action']:<6}  {d['key']}  {change}")
    return 0


def _read_import_file(
    path: Path, fmt: str | None, encoding: str = "iso-8859-1"
) -> list[tuple[str, str, Any]]:
    from airflow_ml_provider.dictionary_store import (
        DictionaryValidationError,
        entries_from_mapping,
        parse_json_entries,
    )

    if fmt is None:
        suffix = path.suffix.lower()
        if suffix == ".json":
            fmt = "json"
        elif suffix in (".properties", ".props"):
            fmt = "properties"
        else:
            raise CLIError(
                f"{path}: cannot tell the format from the extension; pass --format properties|json"
            )
    if not path.is_file():
        raise CLIError(f"{path}: no such file")
    try:
        if fmt == "json":
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise CLIError(f"{path}: not UTF-8 text (byte {exc.start})") from None
            _check_import_json(text, str(path))
            entries = parse_json_entries(text, source=str(path))
            _refuse_repeated_entries(entries, str(path))
            return entries
        load_properties, properties_error = _properties_reader()
        try:  # unique: a key set twice is refused (with both lines), never silently the last one
            mapping = load_properties(path, encoding=encoding, unique=True)
        except properties_error as exc:
            raise CLIError(str(exc)) from None
        return entries_from_mapping(mapping)
    except OSError as exc:
        raise CLIError(f"{path}: {exc.strerror or exc}") from None
    except DictionaryValidationError as exc:
        raise CLIError(str(exc)) from None


def _check_import_json(text: str, source: str) -> None:
    """Refuse what ``json.loads`` would take silently or report without a place: NaN/Infinity and
    out-of-range numbers (not JSON; stored they break ``{{ var.json.x }}``), a key repeated in one
    object (the last would win), integers past Python's digit limit, nesting past the recursion limit.
    The message names the file, line, column and key."""
    from airflow_ml_provider.ml import safejson

    try:
        safejson.loads(text, source=source, allow_nan=False)
    except safejson.JSONInputError as exc:
        raise CLIError(str(exc)) from None


def _refuse_repeated_entries(entries: list[tuple[str, str, Any]], source: str) -> None:
    """An export document listing one key twice (``entries[i]`` and ``entries[j]``) is refused."""
    first: dict[str, int] = {}
    for index, (key, _value, _description) in enumerate(entries):
        if key in first:
            raise CLIError(
                f"{source}: entries[{index}]: key {key!r} is already set by entries[{first[key]}]; "
                "a key may appear once"
            )
        first[key] = index


def _properties_reader():
    """The shared Java .properties reader (airflow_ml_provider.properties)."""
    for module_name in ("airflow_ml_provider.properties", "airflow_ml_provider.azkaban.properties"):
        try:
            module = __import__(module_name, fromlist=["load_properties"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        return module.load_properties, getattr(module, "PropertiesError", ValueError)
    raise CLIError("reading .properties files needs airflow_ml_provider.properties, which is not installed")


def cmd_import(args: argparse.Namespace) -> int:
    from airflow_ml_provider.dictionary_store import DictionaryValidationError, validate_key

    path = Path(args.file)
    try:
        "".encode(args.encoding)
    except LookupError:
        raise CLIError(f"unknown encoding {args.encoding!r}") from None
    entries = _read_import_file(path, args.format, args.encoding)
    store, prefix = _open(args)
    if prefix:
        prefixed = []
        for key, value, description in entries:
            try:
                validate_key(key)
            except DictionaryValidationError as exc:
                raise CLIError(f"{path}: {exc}") from None
            prefixed.append((prefix + key, value, description))
        entries = prefixed
    if args.dry_run:
        from airflow_ml_provider.dictionary_store import validate_value

        current = _run(store.load, prefix or None)
        created = updated = 0
        for key, value, _desc in entries:
            try:
                validate_key(key)
                validate_value(value, key=key)
            except DictionaryValidationError as exc:
                raise CLIError(f"{path}: {exc}") from None
            if key not in current:
                created += 1
            elif current[key] != value:
                updated += 1
        _out(f"dry run: {len(entries)} keys in {path}: {created} would be created, {updated} changed")
        return 0
    result = _run(store.import_entries, entries, updated_by=args.by, source=str(path))
    _out(
        f"imported {result.total} keys from {path}: {len(result.created)} created, "
        f"{len(result.updated)} updated, {len(result.unchanged)} unchanged"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from airflow_ml_provider.dictionary_store import dump_export

    store, prefix = _open(args)
    entries = _run(store.export_entries, prefix or None)
    text = dump_export(entries, strip_prefix=prefix)
    if not args.output:
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=str(out.parent if str(out.parent) else "."))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CLIError(f"{out}: cannot write the export: {exc.strerror or exc}") from None
    print(f"exported {len(entries)} keys to {out}", file=sys.stderr)
    return 0
