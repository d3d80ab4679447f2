"""``airflow-ml config``: show where the platform's locations come from.

Prints every setting resolved by :mod:`airflow_ml_provider.ml.settings` -- the ML home, the artifact
storage, the model registry (and its tables), the dictionary database (and its table), the model
service URL -- each with the layer that decided it (an argument, the Airflow config section ``[ml]``,
an ``AIRFLOW_ML_*`` variable, the secrets backend's kwargs, or the embedded default). Passwords are
masked. The operators, the hook, the UI plugin, the secrets backend and ``airflow-ml serve`` read the
same settings, so this is what they use too. See docs/configuration.md.

Example::

    airflow-ml config
    airflow-ml config --json
"""

from __future__ import annotations

import argparse
import json

from airflow_ml_provider.cli import CLIError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config",
        help="show the resolved locations (registry, storage, dictionary...) and where each comes from",
        description="Show every location the platform uses and which configuration layer set it.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_config)


def collect() -> dict:
    """The resolved settings as a JSON-able dict (URLs masked)."""
    from airflow_ml_provider.ml import settings
    from airflow_ml_provider.ml.db import mask_url
    from airflow_ml_provider.ml.registry import RegistryError

    try:
        resolved = settings.resolve()
    except settings.SettingsError as exc:
        raise CLIError(str(exc)) from None
    out: dict = {}
    for name in settings.OPTIONS:
        value = getattr(resolved, name)
        if name in ("registry", "dictionary") and value:
            value = mask_url(value)
        option, env = settings.OPTIONS[name]
        out[name] = {"value": value, "source": resolved.source(name), "option": f"[ml] {option}", "env": env}
    try:
        reg = settings.registry_location(resolved)
        out["registry"]["url"] = reg.masked
        out["registry"]["tables"] = list(reg.tables)
    except RegistryError as exc:
        out["registry"]["error"] = str(exc)
    try:
        dic = settings.dictionary_location(resolved)
    except settings.SettingsError as exc:
        out["dictionary"]["error"] = str(exc)
    else:
        if dic is not None:
            out["dictionary"]["url"] = dic.masked
            out["dictionary"]["tables"] = [dic.table, f"{dic.table}_history"]
    out["dictionary"]["backend_enabled"] = resolved.dictionary_backend_enabled
    return out


def cmd_config(args: argparse.Namespace) -> int:
    data = collect()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    width = max(len(k) for k in data)
    for name, item in data.items():
        value = item.get("url") or item["value"]
        shown = "(not configured)" if value in (None, "") and name == "dictionary" else (value or "''")
        line = f"{name.ljust(width)}  {shown}  [{item['source']}]"
        if item.get("tables"):
            line += f"  tables: {', '.join(item['tables'])}"
        if item.get("error"):
            line += f"  ERROR: {item['error']}"
        print(line)
    return 0
