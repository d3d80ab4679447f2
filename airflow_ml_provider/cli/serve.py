"""``airflow-ml serve``: run the online model service (uvicorn) for one or more registered models.

Example::

    airflow-ml serve --registry mysql+pymysql://ml@db/ml --models churn,ltv --port 8501
    AIRFLOW_ML_SERVE_TOKEN=s3cret airflow-ml serve --registry ml_registry --models churn

``--registry`` takes the registry's SQLAlchemy URL or an Airflow connection id (resolved through
Airflow, imported only in that case). Without it the service follows the registry setting, as the
operators, the CLI and the UI do (``[ml] registry_conn``, ``$AIRFLOW_ML_REGISTRY``, else
``$AIRFLOW_ML_HOME/registry.db``; docs/configuration.md). See docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re

from airflow_ml_provider.cli import CLIError
from airflow_ml_provider.cli.args import check_bindable, directory_arg, host_arg

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the online model service (TF-Serving-style REST API with hot swap)",
        description="Serve the current version of each model from the registry over a TensorFlow "
        "Serving style REST API; new versions and rollbacks are picked up by polling and swapped in "
        "without dropping a request.",
    )
    p.add_argument("--registry", default=None, metavar="URL_OR_CONN_ID",
                   help="the model registry: a SQLAlchemy URL, or an Airflow connection id (default: the "
                   "registry setting: [ml] registry_conn, $AIRFLOW_ML_REGISTRY, else $AIRFLOW_ML_HOME/registry.db)")
    p.add_argument("--models", required=True, metavar="NAME[,NAME...]", help="the models to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8501, help="port (default 8501, as TF Serving's REST port)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="registry poll interval (default 2)")
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes (default 1); each loads and polls on its own")
    p.add_argument("--keep-versions", type=int, default=3,
                   help="versions kept loaded per model for pinning and instant rollback (default 3)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024,
                   help="largest request body accepted, in bytes (default 4 MiB)")
    p.add_argument("--max-instances", type=int, default=10_000,
                   help="most instances per predict request (default 10000)")
    p.add_argument("--predict-threads", type=int, default=1,
                   help="threads per prediction call (XGBoost nthread; default 1, the fastest for online "
                   "batches; 0 = the library's default)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close a connection whose request headers are not complete this many seconds after "
                   "it opened (or after a request's first byte on a kept-alive connection); 0 = never "
                   "(default 10)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="close a connection whose request body is not complete this many seconds after its "
                   "headers; 0 = never (default 30)")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="open connections per process; one more is answered 503 and closed (default 1000)")
    p.add_argument("--cache-dir", default=None,
                   help="where bundles are fetched to (default: a temporary directory removed at exit)")
    p.add_argument("--token", default=None,
                   help="bearer token required on /v1 and /metrics (default: $AIRFLOW_ML_SERVE_TOKEN; "
                   "prefer the variable, a command line is visible to other users)")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: costly)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def _resolve_registry(value: str | None):
    """The registry's :class:`~airflow_ml_provider.ml.settings.RegistryLocation` (``--registry``, else the setting)."""
    from airflow_ml_provider.ml import settings

    if value is not None and not value.strip():
        raise CLIError("--registry is empty: give a SQLAlchemy URL or an Airflow connection id")
    try:
        return settings.registry_location(registry=value)
    except Exception as exc:  # noqa: BLE001 - RegistryError, SettingsError: one line naming it
        origin = "--registry" if value is not None else "registry"
        raise CLIError(f"{origin}: {exc}") from None


def build_config(args: argparse.Namespace) -> dict:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise CLIError("--models is empty: name at least one model, e.g. --models churn")
    for name in models:
        if not _NAME_RE.match(name):
            raise CLIError(f"--models: invalid model name {name!r} (letters, digits, '_', '-', '.')")
    if not 0 < args.port < 65536:
        raise CLIError(f"--port {args.port} is out of range 1-65535")
    if not args.poll_seconds > 0:
        raise CLIError(f"--poll-seconds must be positive, got {args.poll_seconds}")
    if args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    if args.keep_versions < 1:
        raise CLIError(f"--keep-versions must be at least 1, got {args.keep_versions}")
    if args.max_body_bytes < 1:
        raise CLIError(f"--max-body-bytes must be positive, got {args.max_body_bytes}")
    if args.predict_threads < 0:
        raise CLIError(f"--predict-threads must be 0 or more, got {args.predict_threads}")
    if args.max_instances < 1:
        raise CLIError(f"--max-instances must be positive, got {args.max_instances}")
    for flag, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not 0 <= value < float("inf"):  # also refuses nan
            raise CLIError(f"{flag} must be 0 (never) or a positive number of seconds, got {value}")
    if args.max_connections < 1:
        raise CLIError(f"--max-connections must be at least 1, got {args.max_connections}")
    host_arg(args.host)
    if args.cache_dir is not None:
        directory_arg(args.cache_dir, "--cache-dir")
    location = _resolve_registry(args.registry)
    return {
        "registry": location.url,
        "table_prefix": location.table_prefix,
        "registry_source": location.source,
        "models": models,
        "poll_seconds": args.poll_seconds,
        "keep_versions": args.keep_versions,
        "max_body_bytes": args.max_body_bytes,
        "max_instances": args.max_instances,
        "cache_dir": args.cache_dir,
        "predict_threads": args.predict_threads,
        "header_timeout": args.header_timeout,
        "body_timeout": args.body_timeout,
        "max_connections": args.max_connections,
    }


def _check_registry(url: str, models: list[str], table_prefix: str = "") -> None:
    """Fail fast, with a clear message, when the registry cannot be reached at all."""
    from airflow_ml_provider.ml.registry import ModelRegistry

    try:
        reg = ModelRegistry(url, table_prefix=table_prefix)
        for name in models:
            reg.current(name)
        reg.dispose()
    except Exception as exc:  # noqa: BLE001
        from airflow_ml_provider.ml.db import mask_url

        raise CLIError(f"cannot read the model registry at {mask_url(url)}: {type(exc).__name__}: {exc}") \
            from None


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from airflow_ml_provider.serving.app import CONFIG_ENV, LOG_FORMAT, TOKEN_ENV, create_app

    from airflow_ml_provider.ml.db import mask_url
    from airflow_ml_provider.ml.registry import ModelRegistry

    config = build_config(args)
    check_bindable(args.host, args.port)
    _check_registry(config["registry"], config["models"], config["table_prefix"])
    token = args.token or os.environ.get(TOKEN_ENV) or None
    # Reading Airflow's [ml] config (ml/settings.py) imports Airflow, which configures logging for its own
    # API server: root handlers, and uvicorn.error without propagation. Undo that for this service.
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("airflow_ml_provider.serve").info(
        "Model registry: %s (%s)%s", mask_url(config["registry"]), config["registry_source"],
        f", table prefix {config['table_prefix']!r}" if config["table_prefix"] else "")
    from airflow_ml_provider.serving.protocol import PROTOCOL_PATH, configure

    protocol = configure(header_timeout=config["header_timeout"], body_timeout=config["body_timeout"],
                         max_connections=config["max_connections"])
    common = {
        "http": protocol if args.workers == 1 else PROTOCOL_PATH,  # workers configure it from the env
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": args.access_log,
        "lifespan": "on",
    }
    if args.workers > 1:
        os.environ[CONFIG_ENV] = json.dumps({**config, "log_level": args.log_level})
        if token:
            os.environ[TOKEN_ENV] = token
        uvicorn.run("airflow_ml_provider.serving.app:create_app_from_env", factory=True,
                    workers=args.workers, **common)
    else:
        registry = ModelRegistry(config["registry"], table_prefix=config["table_prefix"])
        app = create_app(registry, config["models"], poll_seconds=config["poll_seconds"],
                         keep_versions=config["keep_versions"], cache_dir=config["cache_dir"], token=token,
                         max_body_bytes=config["max_body_bytes"], max_instances=config["max_instances"],
                         predict_threads=config["predict_threads"])
        uvicorn.run(app, **common)
    return 0
