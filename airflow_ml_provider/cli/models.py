"""``airflow-ml models``: inspect the model registry and roll a model back.

Examples::

    airflow-ml models list [--name churn] [--format table|json]
    airflow-ml models show churn [--version 3] [--format json|table]
    airflow-ml models rollback churn --to 2 [--by alice] [--reason "AUC drop in prod"]
    airflow-ml models label churn stable --version 2        # /v1/models/churn/labels/stable:predict
    airflow-ml models label churn stable --remove
    airflow-ml models canary churn --version 3 --percent 10 # 10% of unpinned requests to version 3
    airflow-ml models promote churn                         # the canary version becomes the served one
    airflow-ml models abort churn                           # back to 100% on the served version
    airflow-ml models shadow churn --version 4 [--percent 100] # v4 scores a copy; only the served one answers
    airflow-ml models shadow churn --stop

Every command takes ``--registry URL_OR_CONN_ID``: a SQLAlchemy URL (``sqlite:////path/reg.db``,
``mysql://user:pw@host/db``) or an Airflow connection id. Without it the registry setting is used,
as by the operators, the UI and ``airflow-ml serve``: the Airflow config option ``[ml] registry_conn``
(``AIRFLOW__ML__REGISTRY_CONN`` or ``airflow.cfg``, read through Airflow), then
``$AIRFLOW_ML_REGISTRY``, then the embedded ``$AIRFLOW_ML_HOME/registry.db``. See docs/configuration.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from airflow_ml_provider.cli import CLIError
from airflow_ml_provider.cli.args import shown
from airflow_ml_provider.ml.settings import OPTIONS

_REGISTRY_OPTION, _REGISTRY_ENV = OPTIONS["registry"]  # the names ml/settings.py reads


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, show and roll back published models (the model registry)",
        description="Inspect the model registry (ml_model_publish) and choose which version is served.",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    def add_registry(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--registry",
            metavar="URL_OR_CONN_ID",
            default=None,
            help="SQLAlchemy URL or Airflow connection id of the registry (default: Airflow config "
            f"[ml] {_REGISTRY_OPTION}, then ${_REGISTRY_ENV}, then $AIRFLOW_ML_HOME/registry.db)",
        )

    p_list = sub.add_parser("list", help="list published model versions")
    p_list.add_argument("--name", default=None, help="only this model")
    p_list.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    add_registry(p_list)
    p_list.set_defaults(func=cmd_list)

    p_show = sub.add_parser("show", help="show one model version (default: the one being served)")
    p_show.add_argument("name", help="model name")
    p_show.add_argument("--version", default=None, help="version to show (default: the served version)")
    p_show.add_argument("--format", choices=["json", "table"], default="json", help="output format")
    add_registry(p_show)
    p_show.set_defaults(func=cmd_show)

    p_rb = sub.add_parser("rollback", help="serve an earlier (or any published) version of a model")
    p_rb.add_argument("name", help="model name")
    p_rb.add_argument("--to", dest="to_version", required=True, metavar="VERSION", help="version to serve")
    p_rb.add_argument("--by", default=None, help="who asks (default: $USER)")
    p_rb.add_argument("--reason", default=None, help="why (kept in the registry)")
    add_registry(p_rb)
    p_rb.set_defaults(func=cmd_rollback)

    def add_who(p: argparse.ArgumentParser) -> None:
        p.add_argument("--by", default=None, help="who asks (default: $USER)")
        p.add_argument("--reason", default=None, help="why (kept in the registry's serving log)")
        add_registry(p)

    p_label = sub.add_parser("label", help="point a version label at a version, or remove it",
                             description="Point LABEL at a version (served at /v1/models/NAME/labels/LABEL), "
                             "or remove it with --remove. Every service replica follows on its next poll.")
    p_label.add_argument("name", help="model name")
    p_label.add_argument("label", help="label name (letters, digits, '_', '-'; e.g. stable, canary)")
    group = p_label.add_mutually_exclusive_group(required=True)
    group.add_argument("--version", default=None, help="the version the label names")
    group.add_argument("--remove", action="store_true", help="remove the label")
    add_who(p_label)
    p_label.set_defaults(func=cmd_label)

    p_canary = sub.add_parser("canary", help="send a percentage of unpinned requests to a version",
                              description="Send PERCENT %% of the requests without /versions/V or /labels/L "
                              "to VERSION until `promote` or `abort`; replaces a running canary.")
    p_canary.add_argument("name", help="model name")
    p_canary.add_argument("--version", required=True, help="the canary version")
    p_canary.add_argument("--percent", required=True, help="share of unpinned requests, 0 < P <= 100 "
                          "(resolution 0.1)")
    add_who(p_canary)
    p_canary.set_defaults(func=cmd_canary)

    p_promote = sub.add_parser("promote", help="make the canary version the served version")
    p_promote.add_argument("name", help="model name")
    add_who(p_promote)
    p_promote.set_defaults(func=cmd_promote)

    p_abort = sub.add_parser("abort", help="end the canary: 100%% of requests to the served version")
    p_abort.add_argument("name", help="model name")
    add_who(p_abort)
    p_abort.set_defaults(func=cmd_abort)

    p_shadow = sub.add_parser("shadow", help="have a version score a copy of the traffic (never answering)",
                              description="Shadow mode: VERSION scores a copy of PERCENT %% (default 100) of "
                              "the unpinned requests after they are answered; only the served version (or "
                              "the canary) answers. Compare in the metrics (shadow_abs_diff, "
                              "shadow_latency_seconds). --stop ends it.")
    p_shadow.add_argument("name", help="model name")
    group = p_shadow.add_mutually_exclusive_group(required=True)
    group.add_argument("--version", default=None, help="the shadow version")
    group.add_argument("--stop", action="store_true", help="end shadow mode")
    p_shadow.add_argument("--percent", default="100", help="share of unpinned requests copied, 0 < P <= 100")
    add_who(p_shadow)
    p_shadow.set_defaults(func=cmd_shadow)

    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------------


def _open(args: argparse.Namespace):
    """The registry named by ``--registry``, else by the registry setting (ml/settings.py)."""
    from airflow_ml_provider.ml import settings
    from airflow_ml_provider.ml.registry import ModelRegistry, RegistryError

    if args.registry is not None and not args.registry.strip():
        raise CLIError("--registry is empty: give a SQLAlchemy URL or an Airflow connection id")
    try:
        location = settings.registry_location(registry=args.registry)
        return ModelRegistry(location.url, table_prefix=location.table_prefix)
    except (RegistryError, settings.SettingsError) as exc:
        origin = "--registry" if args.registry is not None else "registry"
        raise CLIError(f"{origin}: {exc}") from None


def _call(fn, *a, **kw):
    from airflow_ml_provider.ml.registry import RegistryError

    try:
        return fn(*a, **kw)
    except RegistryError as exc:
        raise CLIError(str(exc)) from None


def _version_arg(value: Any) -> int:
    text = str(value).strip()
    # ASCII digits only: str.isdigit() and int() would take '١' (Arabic-Indic one) as version 1
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) < 1:
        raise CLIError(f"invalid version {shown(value)}: must be a positive integer (digits 0-9)")
    return int(text)


def _fmt_metrics(metrics: dict[str, Any], limit: int = 3) -> str:
    items = []
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, float):
            items.append(f"{key}={value:.4g}")
        elif isinstance(value, (int, str)) and not isinstance(value, bool):
            items.append(f"{key}={value}")
        if len(items) >= limit:
            break
    return " ".join(items)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    registry = _open(args)
    try:
        if args.name is not None:
            _call(_check_name, args.name)
        records = _call(registry.list, args.name)
        if args.name is not None and not records:
            raise CLIError(_call(registry._unknown_model_message, args.name))
        served = {}
        refused = {}  # (name, version) -> the newest "refused" event (a model service could not load it)
        for name in sorted({r.name for r in records}):
            cur = _call(registry.current, name)
            served[name] = cur.version if cur else None
            refused.update({(name, v): e for v, e in _call(registry.refusals, name).items()})
    finally:
        registry.dispose()
    if args.format == "json":
        out = [dict(r.to_dict(), serving=served.get(r.name) == r.version,
                    refused=_refusal_dict(refused.get((r.name, r.version)))) for r in records]
        print(json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    if not records:
        print("no models published yet")
        return 0
    rows = [
        [
            r.name,
            str(r.version),
            "*" if served.get(r.name) == r.version else "",
            "refused" if (r.name, r.version) in refused else r.status,
            r.framework,
            r.created_at.strftime("%Y-%m-%d %H:%M:%S") if r.created_at else "",
            _fmt_metrics(r.metrics),
            r.bundle_uri,
        ]
        for r in records
    ]
    print(_table(["NAME", "VERSION", "SERVING", "STATUS", "FRAMEWORK", "CREATED (UTC)", "METRICS", "BUNDLE"],
                 rows))
    for (name, version), event in sorted(refused.items()):
        print(f"{name} version {version} refused by {event.created_by or 'a model service'}: {event.reason}")
    return 0


def _refusal_dict(event: Any) -> dict[str, Any] | None:
    """``{"by", "reason", "at"}`` of a ``refused`` serving event (None: no service refused the version)."""
    if event is None:
        return None
    return {"by": event.created_by, "reason": event.reason,
            "at": event.created_at.isoformat() if event.created_at else None}


def _check_name(name: str) -> str:
    from airflow_ml_provider.ml.registry import validate_model_name

    return validate_model_name(name)


def cmd_show(args: argparse.Namespace) -> int:
    _call(_check_name, args.name)
    version = _version_arg(args.version) if args.version is not None else None
    registry = _open(args)
    try:
        current = _call(registry.current, args.name)
        if version is None:
            if current is None:
                raise CLIError(_call(registry._unknown_model_message, args.name))
            record = current
        else:
            record = _call(registry.get, args.name, version)
        versions = _call(registry.versions, args.name)
        events = _call(registry.events, args.name)
        routing = _call(registry.serving_state, args.name).to_dict()
        refusal = _call(registry.is_refused, args.name, record.version)
    finally:
        registry.dispose()
    data = record.to_dict()
    data["serving"] = current is not None and current.version == record.version
    data["serving_version"] = current.version if current else None
    data["versions"] = versions
    last = events[-1] if events else None
    data["last_serving_event"] = last.to_dict() if last else None
    data["labels"] = routing["labels"]  # label -> version (every label of the model)
    data["canary"] = routing["canary"]  # {"version", "percent"} or None
    data["shadow"] = routing["shadow"]  # {"version", "percent"} or None
    data["refused"] = _refusal_dict(refusal)  # {"by", "reason", "at"}: a model service refused to load it
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
        return 0
    rows = []
    for key in (
        "name",
        "version",
        "serving",
        "serving_version",
        "versions",
        "framework",
        "status",
        "created_at",
        "bundle_uri",
        "spec_uri",
        "checksum",
        "dag_id",
        "run_id",
    ):
        value = data[key]
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        rows.append([key, "" if value is None else str(value)])
    rows.append(["labels", ", ".join(f"{k}=v{v}" for k, v in data["labels"].items()) or "none"])
    canary = data["canary"]
    rows.append(["canary", f"version {canary['version']} at {canary['percent']:g}%" if canary else "none"])
    shadow = data["shadow"]
    rows.append(["shadow", f"version {shadow['version']} on {shadow['percent']:g}%" if shadow else "none"])
    if refusal is not None:
        rows.append(["refused", f"by {refusal.created_by or 'a model service'} at {refusal.created_at}: "
                                f"{refusal.reason}"])
    for key in sorted(record.metrics):
        rows.append([f"metrics.{key}", json.dumps(record.metrics[key], ensure_ascii=False)])
    if last is not None:
        who = f" by {last.created_by}" if last.created_by else ""
        rows.append(["last_serving_event", f"{last.action} -> v{last.version}{who} at {last.created_at}"])
    print(_table(["FIELD", "VALUE"], rows))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    _call(_check_name, args.name)
    version = _version_arg(args.to_version)
    by = args.by or os.environ.get("USER") or os.environ.get("USERNAME") or None
    registry = _open(args)
    try:
        before = _call(registry.current, args.name)
        event = _call(registry.rollback, args.name, version, by=by, reason=args.reason)
    finally:
        registry.dispose()
    was = f" (was version {before.version})" if before is not None else ""
    print(
        f"model {args.name!r}: now serving version {event.version}{was}; "
        f"rollback event {event.id} recorded, the model service follows it on its next poll"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# labels and canary


def _who(args: argparse.Namespace) -> str | None:
    return args.by or os.environ.get("USER") or os.environ.get("USERNAME") or None


_FOLLOW = "every model service follows it on its next poll"


def cmd_label(args: argparse.Namespace) -> int:
    from airflow_ml_provider.ml.registry import validate_label

    _call(_check_name, args.name)
    _call(validate_label, args.label)
    version = None if args.remove else _version_arg(args.version)
    registry = _open(args)
    try:
        if args.remove:
            event = _call(registry.remove_label, args.name, args.label, by=_who(args), reason=args.reason)
        else:
            event = _call(registry.set_label, args.name, args.label, version, by=_who(args), reason=args.reason)
    finally:
        registry.dispose()
    if args.remove:
        print(f"model {args.name!r}: label {args.label!r} removed (it named version {event.version}); "
              f"event {event.id} recorded, {_FOLLOW}")
    else:
        print(f"model {args.name!r}: label {args.label!r} -> version {event.version}; "
              f"event {event.id} recorded, {_FOLLOW}")
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    from airflow_ml_provider.ml.registry import validate_percent

    _call(_check_name, args.name)
    version = _version_arg(args.version)
    percent = _call(validate_percent, args.percent)
    registry = _open(args)
    try:
        event = _call(registry.start_canary, args.name, version, percent, by=_who(args), reason=args.reason)
        current = _call(registry.current, args.name)
    finally:
        registry.dispose()
    served = f"version {current.version}" if current is not None else "nothing"
    print(f"model {args.name!r}: canary version {event.version} gets {percent:g}% of unpinned requests "
          f"({served} the rest); event {event.id} recorded, {_FOLLOW}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    _call(_check_name, args.name)
    registry = _open(args)
    try:
        before = _call(registry.current, args.name)
        event = _call(registry.promote, args.name, by=_who(args), reason=args.reason)
    finally:
        registry.dispose()
    was = f" (was version {before.version})" if before is not None else ""
    print(f"model {args.name!r}: canary version {event.version} promoted, now serving it{was}; "
          f"event {event.id} recorded, {_FOLLOW}")
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    _call(_check_name, args.name)
    registry = _open(args)
    try:
        event = _call(registry.abort_canary, args.name, by=_who(args), reason=args.reason)
        current = _call(registry.current, args.name)
    finally:
        registry.dispose()
    served = f"version {current.version}" if current is not None else "the served version"
    print(f"model {args.name!r}: canary version {event.version} aborted, 100% of requests to {served}; "
          f"event {event.id} recorded, {_FOLLOW}")
    return 0


def cmd_shadow(args: argparse.Namespace) -> int:
    from airflow_ml_provider.ml.registry import validate_percent

    _call(_check_name, args.name)
    version = None if args.stop else _version_arg(args.version)
    percent = None if args.stop else _call(validate_percent, args.percent)
    registry = _open(args)
    try:
        if args.stop:
            event = _call(registry.stop_shadow, args.name, by=_who(args), reason=args.reason)
        else:
            event = _call(registry.start_shadow, args.name, version, percent, by=_who(args), reason=args.reason)
    finally:
        registry.dispose()
    if args.stop:
        print(f"model {args.name!r}: shadow version {event.version} stopped; event {event.id} recorded, {_FOLLOW}")
    else:
        print(f"model {args.name!r}: shadow version {event.version} scores a copy of {percent:g}% of unpinned "
              f"requests (answers unchanged); event {event.id} recorded, {_FOLLOW}")
    return 0
