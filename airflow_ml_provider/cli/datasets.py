"""``airflow-ml datasets``: generate the demo data sets the example DAGs train on.

Examples::

    airflow-ml datasets audio                         # $AIRFLOW_ML_HOME/audio.db (what the DAG reads)
    airflow-ml datasets audio --events 20000 --out /tmp/demo          # /tmp/demo/audio.db
    airflow-ml datasets audio --out mysql+pymysql://ml:pw@db:3306/ml  # tables in a MySQL database

``--out`` is a directory (the file ``audio.db`` is written in it), an ``.db``/``.sqlite`` file path,
or a SQLAlchemy URL. Without it the data goes where ``dags/xgboost_recommendation.py`` looks on
the embedded default set-up: ``audio.db`` in the ML home (``$AIRFLOW_ML_HOME``, default ``~/airflow-ml``). An SQLite file is generated under a
temporary name and renamed into place, so a failed run leaves the previous file untouched.
Existing tables of the same names are replaced (a re-run with the same seed gives the same data).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

from airflow_ml_provider.cli import CLIError

#: Upper bounds that keep a typo (an extra zero or ten) from filling the disk.
LIMITS = {"events": 50_000_000, "users": 5_000_000, "items": 5_000_000, "hosts": 1_000_000, "days": 3650}
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
AUDIO_FILE = "audio.db"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "datasets",
        help="generate the demo data sets of the example DAGs",
        description="Generate the synthetic data sets the example DAGs train on.",
    )
    sub = parser.add_subparsers(dest="datasets_command", metavar="DATASET")
    p = sub.add_parser(
        "audio",
        help="the audio-platform data set of xgboost_recommendation (users, items, play events)",
        description="Generate the synthetic audio-platform data set (categories, hosts, audio_items, "
        "users, play_events) into an SQLite file or a SQL database.",
    )
    p.add_argument("--out", default=None, metavar="DIR_FILE_OR_URL",
                   help="a directory (audio.db is written in it), an .db file, or a SQLAlchemy URL "
                   "(default: $AIRFLOW_ML_HOME/audio.db, where the example DAG reads it)")
    p.add_argument("--events", type=_count("events"), default=60_000, help="play events (default 60000)")
    p.add_argument("--users", type=_count("users"), default=3_000, help="users (default 3000)")
    p.add_argument("--items", type=_count("items"), default=1_200, help="audio items (default 1200)")
    p.add_argument("--hosts", type=_count("hosts"), default=300, help="hosts (default 300)")
    p.add_argument("--days", type=_count("days"), default=60, help="days the events span (default 60)")
    p.add_argument("--seed", type=_count("seed", minimum=0), default=7, help="random seed (default 7)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=cmd_audio)
    parser.set_defaults(func=lambda args: _missing_dataset(parser))


def _missing_dataset(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _count(name: str, minimum: int = 1):
    """An argparse type: a plain decimal integer within bounds, named in the error."""
    limit = LIMITS.get(name, 2**31 - 1)

    def parse(text: str) -> int:
        raw = text.strip()
        if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
            raise argparse.ArgumentTypeError(f"--{name} must be a whole number {minimum}..{limit}, got {text[:40]!r}")
        value = int(raw)
        if not minimum <= value <= limit:
            raise argparse.ArgumentTypeError(f"--{name} must be between {minimum} and {limit}, got {value}")
        return value

    return parse


def default_ml_home() -> str:
    """The ML home (``[ml] home``, ``$AIRFLOW_ML_HOME``, ``~/airflow-ml``: the settings module decides)."""
    from airflow_ml_provider.ml.settings import SettingsError, resolve

    try:
        return resolve().home
    except SettingsError as exc:
        raise CLIError(str(exc)) from None


def resolve_target(out: str | None) -> tuple[str, str]:
    """``(kind, target)``: kind is ``sqlite`` (target = absolute file path) or ``url``."""
    if out is None or not out.strip():
        if out is not None:
            raise CLIError("--out is empty: give a directory, an .db file or a SQLAlchemy URL")
        return "sqlite", os.path.abspath(os.path.join(default_ml_home(), AUDIO_FILE))
    out = out.strip()
    if out.startswith("sqlite:///"):
        path = out.removeprefix("sqlite:///")
        return "sqlite", os.path.abspath(path)
    if "://" in out:
        try:
            from sqlalchemy.engine import make_url

            url = make_url(out)
            url.get_dialect()
        except Exception as exc:  # noqa: BLE001 - any parse/driver error becomes one line
            from airflow_ml_provider.ml.storage import mask_uri

            raise CLIError(f"--out {mask_uri(out)}: not a usable SQLAlchemy URL ({type(exc).__name__}: {exc})") \
                from None
        return "url", out
    path = Path(out).expanduser()
    if path.is_dir() or not path.name.lower().endswith(SQLITE_SUFFIXES):
        if path.exists() and not path.is_dir():
            raise CLIError(f"--out {out}: exists and is not a directory (name an .db file, a directory or a URL)")
        path = path / AUDIO_FILE
    return "sqlite", os.path.abspath(path)


def cmd_audio(args: argparse.Namespace) -> int:
    from airflow_ml_provider.ml.datasets.audio import AudioDatasetSize, load_audio_dataset

    kind, target = resolve_target(args.out)
    size = AudioDatasetSize(users=args.users, items=args.items, hosts=args.hosts, events=args.events,
                            days=args.days)
    if kind == "sqlite":
        counts = _write_sqlite(target, size, args.seed)
        where = target
    else:
        from airflow_ml_provider.ml.storage import mask_uri

        where = mask_uri(target)
        try:
            counts = load_audio_dataset(target, size=size, seed=args.seed)
        except ImportError as exc:
            raise CLIError(f"--out {where}: the database driver is not installed ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - connection/permission errors: one line naming the target
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise CLIError(f"--out {where}: cannot write the data set: {type(exc).__name__}: {first}") from None
    if not args.quiet:
        print(f"audio data set written to {where}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


def _write_sqlite(path: str, size, seed: int) -> dict[str, int]:
    from airflow_ml_provider.ml.datasets.audio import load_audio_dataset

    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out: cannot create the directory {parent}: {exc.strerror or exc}") from None
    if os.path.isdir(path):
        raise CLIError(f"--out: {path} is a directory")
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        counts = load_audio_dataset(tmp, size=size, seed=seed)
        # Back to a rollback journal before the rename: a WAL-mode file would pick up a stale
        # `audio.db-wal` left by a reader of the previous file; a DELETE-mode file ignores it.
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode=DELETE")
        finally:
            con.close()
        os.replace(tmp, path)
    except OSError as exc:
        raise CLIError(f"--out {path}: cannot write the data set: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. sqlite3.OperationalError (disk full, read-only)
        raise CLIError(f"--out {path}: cannot write the data set: {type(exc).__name__}: {exc}") from None
    finally:
        for leftover in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal"):
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
            except OSError:
                pass
    return counts
