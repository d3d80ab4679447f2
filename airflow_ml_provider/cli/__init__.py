"""The ``airflow-ml`` command line.

Each subcommand group lives in its own module of this package and exposes
``register(subparsers)``; the module adds its parser and sets ``func`` on it. ``func(args)``
returns an exit code (or None for 0). Modules import heavy libraries inside ``func`` only.

Errors: raise :class:`CLIError` with a message that names the file, line, key or column at fault.
:func:`main` prints it as ``airflow-ml: error: ...`` and exits non-zero, never with a traceback
(set ``AIRFLOW_ML_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = (
    "airflow_ml_provider.cli.features",
    "airflow_ml_provider.cli.models",
    "airflow_ml_provider.cli.dictionary",
    "airflow_ml_provider.cli.azkaban",
    "airflow_ml_provider.cli.serve",
    "airflow_ml_provider.cli.datasets",
    "airflow_ml_provider.cli.config",
)


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airflow-ml",
        description="Low-code machine learning on Apache Airflow.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a subcommand module not written yet
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except CLIError as exc:
        print(f"airflow-ml: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("airflow-ml: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI never ends in a bare traceback
        if os.environ.get("AIRFLOW_ML_DEBUG"):
            raise
        print(f"airflow-ml: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
