"""A synthetic audio-platform data set: users, hosts, categories, audio items and play events.

The example DAG ``xgboost_recommendation`` learns "will this user listen to this audio item for more
than 30 seconds" (``play_events.listened_30s``) from it. The data is generated with a hidden
ground-truth model, so there is real signal to learn:

* a user listens longer to items of their favourite category (and of its parent category);
* popular, high-level, verified hosts keep listeners; paid items lose non-VIP users;
* subscriptions and searches convert better than the home feed; late evenings better than mornings;
* very long items lose listeners; a few user ages are unknown (NULL), as in real profiles.

``play_seconds`` is the raw outcome (it leaks the label and is left out of :data:`TRAINING_QUERY`).

:func:`load_audio_dataset` writes the tables into a database given as an SQLite file path or a
SQLAlchemy URL (SQLite by default; MySQL/MariaDB in production), replacing earlier tables. It is
deterministic for a seed and pure Python (numpy + the standard library / SQLAlchemy Core).
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import numpy as np

__all__ = ["AudioDatasetSize", "TRAINING_QUERY", "TABLES", "generate_tables", "load_audio_dataset"]

# A portable (SQLite / MySQL / Postgres) query producing one training row per play event, kept in
# audio_training.sql beside this module so that DAGs can use the file (template_searchpath=[SQL_DIR])
# without importing this module. Bound parameter :start_ts limits the events used.
TRAINING_QUERY_FILE = "audio_training.sql"
TRAINING_QUERY = (Path(__file__).with_name(TRAINING_QUERY_FILE)).read_text(encoding="utf-8").strip()

_PARENTS = {
    "knowledge": ["history", "science", "business", "language"],
    "entertainment": ["comedy", "talk_show", "music_talk", "celebrity"],
    "fiction": ["mystery", "romance", "fantasy", "sci_fi"],
    "lifestyle": ["health", "parenting", "travel", "food"],
    "kids": ["bedtime", "nursery", "kids_science"],
    "news": ["daily_news", "finance_news", "sports"],
}
_CITIES = ["beijing", "shanghai", "guangzhou", "shenzhen", "hangzhou", "chengdu", "wuhan", "xian",
           "nanjing", "chongqing", "suzhou", "tianjin", "changsha", "qingdao", "other"]
_DEVICES = ["android", "ios", "car", "smart_speaker", "web"]
_SOURCES = ["home_feed", "search", "subscription", "recommend", "playlist"]
_NETWORKS = ["wifi", "4g", "5g"]
_EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z
_DAY = 86_400

TABLES = {
    "categories": [("category_id", "INTEGER PRIMARY KEY"), ("name", "VARCHAR(64)"), ("parent", "VARCHAR(64)")],
    "hosts": [("host_id", "INTEGER PRIMARY KEY"), ("name", "VARCHAR(64)"), ("followers", "INTEGER"),
              ("level", "INTEGER"), ("verified", "INTEGER"), ("category_id", "INTEGER")],
    "audio_items": [("item_id", "INTEGER PRIMARY KEY"), ("host_id", "INTEGER"), ("category_id", "INTEGER"),
                    ("title", "VARCHAR(128)"), ("duration_s", "INTEGER"), ("published_ts", "BIGINT"),
                    ("is_paid", "INTEGER")],
    "users": [("user_id", "INTEGER PRIMARY KEY"), ("age", "INTEGER"), ("gender", "VARCHAR(8)"),
              ("city", "VARCHAR(32)"), ("device", "VARCHAR(16)"), ("is_vip", "INTEGER"),
              ("signup_ts", "BIGINT"), ("favorite_category_id", "INTEGER")],
    "play_events": [("event_id", "BIGINT PRIMARY KEY"), ("user_id", "INTEGER"), ("item_id", "INTEGER"),
                    ("event_ts", "BIGINT"), ("hour", "INTEGER"), ("source", "VARCHAR(16)"),
                    ("network", "VARCHAR(8)"), ("play_seconds", "DOUBLE PRECISION"), ("listened_30s", "INTEGER")],
}


class AudioDatasetSize(NamedTuple):
    """How many rows of each table (immutable; a NamedTuple: cheaper to define than a dataclass, which
    matters because the example DAG file imports this module)."""

    users: int = 3_000
    items: int = 1_200
    hosts: int = 300
    events: int = 60_000
    days: int = 60


def _categories() -> list[tuple[int, str, str]]:
    rows = []
    for parent, names in _PARENTS.items():
        for name in names:
            rows.append((len(rows) + 1, name, parent))
    return rows


def generate_tables(size: AudioDatasetSize = AudioDatasetSize(), seed: int = 7,
                    event_chunk: int = 200_000) -> Iterator[tuple[str, list[str], list[tuple[Any, ...]]]]:
    """Yield ``(table, columns, rows)`` batches; play events come in chunks of ``event_chunk`` rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cats = _categories()
    n_cat = len(cats)
    parent_of = np.array([0] + [list(_PARENTS).index(p) for _, _, p in cats])
    yield "categories", ["category_id", "name", "parent"], cats

    # hosts: followers heavy-tailed; level 1..5 tied to followers; a host mostly publishes one category
    h_followers = np.floor(np.exp(rng.normal(7.0, 1.8, size.hosts))).astype(np.int64)
    h_level = np.clip((np.log10(h_followers + 1) + rng.normal(0, 0.6, size.hosts)).round(), 1, 5).astype(int)
    h_verified = (rng.random(size.hosts) < 0.1 + 0.15 * h_level).astype(int)
    h_cat = rng.integers(1, n_cat + 1, size.hosts)
    yield "hosts", [c for c, _ in TABLES["hosts"]], [
        (i + 1, f"host_{i + 1:05d}", int(h_followers[i]), int(h_level[i]), int(h_verified[i]), int(h_cat[i]))
        for i in range(size.hosts)
    ]

    i_host = rng.integers(0, size.hosts, size.items)
    i_cat = np.where(rng.random(size.items) < 0.8, h_cat[i_host], rng.integers(1, n_cat + 1, size.items))
    i_duration = np.clip(np.exp(rng.normal(6.7, 0.8, size.items)), 60, 4 * 3600).astype(int)
    i_published = _EPOCH - rng.integers(0, 365 * _DAY, size.items)
    i_paid = (rng.random(size.items) < 0.15).astype(int)
    i_quality = rng.normal(0, 0.5, size.items)  # hidden
    yield "audio_items", [c for c, _ in TABLES["audio_items"]], [
        (i + 1, int(i_host[i]) + 1, int(i_cat[i]), f"episode {i + 1} of host {int(i_host[i]) + 1}",
         int(i_duration[i]), int(i_published[i]), int(i_paid[i]))
        for i in range(size.items)
    ]

    u_age = np.clip(rng.normal(32, 10, size.users), 12, 80).astype(int)
    u_age_known = rng.random(size.users) > 0.08
    u_gender = rng.choice(["f", "m", "u"], size.users, p=[0.46, 0.46, 0.08])
    u_city = rng.choice(_CITIES, size.users, p=_city_probs())
    u_device = rng.choice(_DEVICES, size.users, p=[0.55, 0.25, 0.08, 0.07, 0.05])
    u_vip = (rng.random(size.users) < 0.18).astype(int)
    u_signup = _EPOCH - rng.integers(0, 3 * 365 * _DAY, size.users)
    u_fav = rng.integers(1, n_cat + 1, size.users)
    u_activity = np.exp(rng.normal(0, 1.0, size.users))  # hidden: heavy users play more
    u_bias = rng.normal(0, 0.4, size.users)  # hidden
    yield "users", [c for c, _ in TABLES["users"]], [
        (u + 1, int(u_age[u]) if u_age_known[u] else None, str(u_gender[u]), str(u_city[u]), str(u_device[u]),
         int(u_vip[u]), int(u_signup[u]), int(u_fav[u]))
        for u in range(size.users)
    ]

    user_p = u_activity / u_activity.sum()
    item_pop = np.exp(0.6 * np.log1p(h_followers[i_host]) / 3 + i_quality)
    item_p = item_pop / item_pop.sum()
    source_effect = {"home_feed": -0.35, "search": 0.7, "subscription": 1.0, "recommend": 0.1, "playlist": 0.4}
    device_effect = {"android": 0.0, "ios": 0.1, "car": 0.6, "smart_speaker": 0.4, "web": -0.3}
    s_eff = np.array([source_effect[s] for s in _SOURCES])
    d_eff = np.array([device_effect[d] for d in _DEVICES])
    dev_idx = np.searchsorted(np.array(_DEVICES), u_device, sorter=np.argsort(_DEVICES))
    dev_idx = np.argsort(_DEVICES)[dev_idx]
    columns = [c for c, _ in TABLES["play_events"]]
    done = 0
    while done < size.events:
        n = min(event_chunk, size.events - done)
        u = rng.choice(size.users, n, p=user_p)
        # users lean towards their favourite category: 35 % of plays come from it
        it = rng.choice(size.items, n, p=item_p)
        fav_pick = rng.random(n) < 0.35
        fav_items = _items_of_category(rng, i_cat, u_fav[u[fav_pick]])
        it[fav_pick] = fav_items
        ts = _EPOCH + rng.integers(0, size.days * _DAY, n)
        hour = ((ts % _DAY) // 3600 + 8) % 24  # local time, UTC+8
        src = rng.choice(len(_SOURCES), n, p=[0.45, 0.12, 0.15, 0.2, 0.08])
        net = rng.choice(len(_NETWORKS), n, p=[0.55, 0.35, 0.10])
        cat_match = (i_cat[it] == u_fav[u]).astype(float)
        parent_match = (parent_of[i_cat[it]] == parent_of[u_fav[u]]).astype(float) - cat_match
        age = u_age[u]
        kids = (parent_of[i_cat[it]] == list(_PARENTS).index("kids")).astype(float)
        logit = (
            -0.6
            + 1.6 * cat_match
            + 0.5 * parent_match
            + 0.22 * (np.log1p(h_followers[i_host[it]]) - 7.0)
            + 0.12 * (h_level[i_host[it]] - 3)
            + 0.25 * h_verified[i_host[it]]
            + s_eff[src]
            + d_eff[dev_idx[u]]
            + 0.3 * u_vip[u]
            - 1.1 * i_paid[it] * (1 - u_vip[u])
            - 0.35 * np.log(i_duration[it] / 900.0)
            + 0.35 * np.cos((hour - 22) / 24 * 2 * math.pi)
            + 0.6 * kids * (age < 20)
            - 0.25 * (net == 1)
            + i_quality[it]
            + u_bias[u]
        )
        p = 1.0 / (1.0 + np.exp(-logit))
        label = (rng.random(n) < p).astype(int)
        play = np.where(label == 1, 30.0 + rng.exponential(np.minimum(i_duration[it], 1800) * 0.4),
                        rng.uniform(1.0, 30.0, n))
        play = np.minimum(play, i_duration[it]).round(1)
        rows = list(zip(
            (np.arange(done, done + n) + 1).tolist(), (u + 1).tolist(), (it + 1).tolist(), ts.tolist(),
            hour.tolist(), [_SOURCES[s] for s in src], [_NETWORKS[k] for k in net], play.tolist(), label.tolist(),
        ))
        yield "play_events", columns, rows
        done += n


def _city_probs() -> list[float]:
    import numpy as np

    w = np.array([10, 10, 8, 8, 6, 6, 5, 4, 4, 4, 3, 3, 2, 2, 25], dtype=float)
    return list(w / w.sum())


def _items_of_category(rng: np.random.Generator, i_cat: np.ndarray, cats: np.ndarray) -> np.ndarray:
    import numpy as np

    order = np.argsort(i_cat, kind="stable")
    sorted_cat = i_cat[order]
    lo = np.searchsorted(sorted_cat, cats, "left")
    hi = np.searchsorted(sorted_cat, cats, "right")
    has = hi > lo
    pick = lo + np.floor(rng.random(len(cats)) * np.maximum(hi - lo, 1)).astype(int)
    out = np.where(has, order[np.minimum(pick, len(order) - 1)], rng.integers(0, len(i_cat), len(cats)))
    return out


def load_audio_dataset(target: str | os.PathLike, *, size: AudioDatasetSize | None = None, seed: int = 7,
                       **size_overrides: int) -> dict[str, int]:
    """Generate the data set into ``target`` (an SQLite file path or a SQLAlchemy URL).

    Existing tables of the same names are dropped first, so a re-run gives the same data.
    Returns the number of rows per table. ``size_overrides`` (users=, items=, hosts=, events=,
    days=) adjust the default :class:`AudioDatasetSize`.
    """
    size = size or AudioDatasetSize(**size_overrides)
    text = os.fspath(target)
    if "://" not in text or text.startswith("sqlite:///"):
        path = text.removeprefix("sqlite:///") if text.startswith("sqlite:///") else text
        if text.startswith("sqlite:///") and not path.startswith("/"):
            path = os.path.abspath(path)
        return _load_sqlite(path, size, seed)
    return _load_sqlalchemy(text, size, seed)


def _load_sqlite(path: str, size: AudioDatasetSize, seed: int) -> dict[str, int]:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    con = sqlite3.connect(path)
    counts: dict[str, int] = {}
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        with con:
            for name, cols in TABLES.items():
                con.execute(f"DROP TABLE IF EXISTS {name}")
                con.execute(f"CREATE TABLE {name} ({', '.join(f'{c} {t}' for c, t in cols)})")
        for name, columns, rows in generate_tables(size, seed):
            with con:
                con.executemany(
                    f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", rows
                )
            counts[name] = counts.get(name, 0) + len(rows)
        with con:
            con.execute("CREATE INDEX IF NOT EXISTS ix_play_events_ts ON play_events (event_ts)")
    finally:
        con.close()
    return counts


def _load_sqlalchemy(url: str, size: AudioDatasetSize, seed: int) -> dict[str, int]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    meta = sa.MetaData()
    type_map = {"INTEGER": sa.Integer, "BIGINT": sa.BigInteger, "DOUBLE PRECISION": sa.Float}
    tables = {}
    for name, cols in TABLES.items():
        columns = []
        for col, decl in cols:
            base = decl.replace(" PRIMARY KEY", "")
            if base.startswith("VARCHAR"):
                typ: Any = sa.String(int(base[8:-1]))
            else:
                typ = type_map[base]
            columns.append(sa.Column(col, typ, primary_key="PRIMARY KEY" in decl, autoincrement=False))
        tables[name] = sa.Table(name, meta, *columns)
    counts: dict[str, int] = {}
    try:
        meta.drop_all(engine)
        meta.create_all(engine)
        for name, columns, rows in generate_tables(size, seed, event_chunk=50_000):
            with engine.begin() as conn:
                conn.execute(tables[name].insert(), [dict(zip(columns, r)) for r in rows])
            counts[name] = counts.get(name, 0) + len(rows)
        with engine.begin() as conn:
            sa.Index("ix_play_events_ts", tables["play_events"].c.event_ts).create(conn, checkfirst=True)
    finally:
        engine.dispose()
    return counts
