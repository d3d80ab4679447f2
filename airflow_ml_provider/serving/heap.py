"""Garbage-collector settings of the online service: the cause of its tail latency.

Measured (issue 13; bench/bench_serving.py, 100-row batches under wrk): the service's process holds
the objects of xgboost, numpy, pandas, SQLAlchemy, prometheus_client and the fitted specs -- several
hundred thousand tracked objects. Every full (generation 2) collection walks all of them: 50-200 ms
with the event loop stopped, a few times a minute under load, which is the p99 outlier; generation 1
collections took 1-13 ms. None of those objects ever becomes garbage while the model serves.

So, once the models are loaded (startup and after every swap), :func:`settle_heap` moves every live
object into the collector's permanent generation (:func:`gc.freeze`): later collections only look at
objects created since, i.e. at requests. Garbage among the frozen objects is not collected: at
startup a :func:`gc.collect` runs first (no request is waiting then); after a swap it does not (it
would stop the loop), so a replaced model's reference cycles, if any, stay -- a swap frees the model
itself by reference counting (the bundle's files are removed by the manager).
"""

from __future__ import annotations

import gc


def settle_heap(*, collect: bool = False) -> None:
    """Freeze the objects alive now out of the collector's view (optionally collecting first)."""
    if collect:
        gc.collect()
    gc.freeze()
