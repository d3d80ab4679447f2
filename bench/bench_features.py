"""Feature library vs scikit-learn's ColumnTransformer on the same table.

The table: BENCH_FEATURES_ROWS rows (default 1,000,000) with 20 numeric columns (about 1 % missing)
and 10 categorical ones (``cat_0`` has 100,000 distinct values, the others 3..40), plus 2 crosses.
Both sides do the same work:

* 5 x (impute mean -> standardize), 5 x (impute 0 -> clip -> log1p -> standardize),
  5 x (impute median -> min-max), 5 x (impute median -> 10 quantile buckets, ordinal);
* 9 small categoricals -> one-hot with unknown handling;
* ``cat_0`` (100k values): ours maps it to its vocabulary index; scikit-learn is measured twice,
  with ``OrdinalEncoder`` (the same output) and with ``OneHotEncoder`` (sparse; the classic set-up
  whose one-row transform is slow);
* 2 hashed crosses (ours: ``hashed_cross``; scikit-learn: a FunctionTransformer hashing the joined
  strings with pandas).

Each library runs in its own subprocess on the same Parquet file: fit+transform wall time, peak
RSS above the RSS after loading the data (``/proc/self/clear_refs`` resets the peak), and the
single-row transform latency (p50/p99 over many requests; scikit-learn over fewer, as it is slow).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_NUMERIC = 20
N_CATEGORICAL = 10
SMALL_CARDINALITIES = [3, 5, 8, 10, 12, 15, 20, 30, 40]
BIG_CARDINALITY = 100_000
CROSSES = [("cat_1", "cat_2"), ("cat_3", "cat_0")]
CROSS_BUCKETS = 10_000
ROW_SAMPLES_OURS = 5000
ROW_SAMPLES_SKLEARN = 15


def _rows() -> int:
    return int(os.environ.get("BENCH_FEATURES_ROWS", "1000000"))


# ---------------------------------------------------------------------------------------------
# data + spec
# ---------------------------------------------------------------------------------------------


def make_data(n: int, path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(42)
    cols = {}
    for i in range(N_NUMERIC):
        kind = i // 5
        if kind == 1:
            x = rng.lognormal(3.0, 1.5, n)  # skewed, for log1p
        elif kind == 2:
            x = rng.uniform(-50, 50, n)
        else:
            x = rng.normal(10 * i, 3 + i, n)
        x[rng.random(n) < 0.01] = np.nan
        cols[f"num_{i}"] = x
    # cat_0: 100k distinct values, Zipf-like popularity
    ids = np.minimum((rng.pareto(1.2, n) * 50).astype(np.int64), BIG_CARDINALITY - 1)
    k = min(n, BIG_CARDINALITY)
    ids[:k] = np.arange(k)  # every value occurs (when the table is big enough)
    rng.shuffle(ids)
    labels = np.array([f"item_{j}" for j in range(BIG_CARDINALITY)], dtype=object)
    cols["cat_0"] = labels[ids]
    for k, card in enumerate(SMALL_CARDINALITIES, start=1):
        values = np.array([f"c{k}_{j}" for j in range(card)] + [None], dtype=object)
        p = rng.dirichlet(np.ones(card)) * 0.99
        cols[f"cat_{k}"] = values[rng.choice(card + 1, n, p=np.append(p, 0.01))]
    cols["label"] = (rng.random(n) < 0.3).astype(np.int8)
    df = pd.DataFrame(cols)
    df.to_parquet(path, index=False)


def spec_yaml() -> str:
    lines = ["version: 1", "label: label", "on_missing: default", "item_features:"]
    for i in range(N_NUMERIC):
        kind = i // 5
        if kind == 0:
            chain = "[fill_missing: {strategy: mean}, standardize]"
        elif kind == 1:
            chain = "[fill_missing: {value: 0}, clip: {min: 0, max: 100000}, log1p, standardize]"
        elif kind == 2:
            chain = "[fill_missing: {strategy: median}, min_max]"
        else:
            chain = "[fill_missing: {strategy: median}, bucketize: {num_buckets: 10}]"
        lines += [f"  - name: num_{i}", "    dtype: numeric", f"    transforms: {chain}"]
    lines += ["user_features:", "  - name: cat_0", "    dtype: categorical", "    transforms: [vocabulary]"]
    for k in range(1, N_CATEGORICAL):
        lines += [f"  - name: cat_{k}", "    dtype: categorical", "    transforms: [one_hot]"]
    lines.append("cross_features:")
    for a, b in CROSSES:
        lines += [
            f"  - name: {a}_x_{b}",
            f"    inputs: [{a}, {b}]",
            f"    transforms: [hashed_cross: {{buckets: {CROSS_BUCKETS}}}]",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakRSS:
    """Peak resident memory above the level at start (Linux: reset VmHWM via clear_refs)."""

    def __enter__(self):
        gc.collect()
        self.base_kb = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        return self

    def __exit__(self, *exc) -> None:
        self.peak_kb = _status_kb("VmHWM")

    @property
    def delta_bytes(self) -> int:
        return max(0, self.peak_kb - self.base_kb) * 1024


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(samples_s) * 1e6
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def worker_ours(data: str, spec_text: str, sparse: bool = False) -> dict:
    import numpy as np
    import pandas as pd

    from airflow_ml_provider.ml.features import FeatureSpec, FittedSpec, fit_transform

    df = pd.read_parquet(data)
    spec = FeatureSpec.from_yaml(spec_text)
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        fitted, x = fit_transform(spec, df, sparse=sparse)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    shape = x.shape
    if sparse:  # the row path is measured once, with the dense worker
        return {
            "seconds": elapsed,
            "cpu_seconds": cpu,
            "peak_bytes": mem.delta_bytes,
            "peak_reset": mem.reset,
            "shape": list(shape),
            "nnz": int(x.nnz),
        }
    # the service loads the fitted spec from JSON: measure the row path on the loaded one
    with tempfile.TemporaryDirectory() as tmp:
        fitted.save(Path(tmp) / "fitted.json")
        served = FittedSpec.load(Path(tmp) / "fitted.json")
    rng = np.random.default_rng(7)
    picks = rng.choice(len(df), ROW_SAMPLES_OURS, replace=False)
    rows = df.iloc[picks][served.input_columns].to_dict("records")
    for r in rows[:200]:
        served.transform_row(r)
    times = []
    identical = True
    for i, r in zip(picks, rows):
        t = time.perf_counter()
        v = served.transform_row(r)
        times.append(time.perf_counter() - t)
        identical &= bool(np.array_equal(v.view(np.uint32), x[i].view(np.uint32)))
    p50, p99 = _percentiles(times)
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "peak_bytes": mem.delta_bytes,
        "peak_reset": mem.reset,
        "shape": list(shape),
        "row_p50_us": p50,
        "row_p99_us": p99,
        "row_samples": len(times),
        "row_identical": identical,
    }


def _sklearn_pipeline(big_onehot: bool):
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import (
        FunctionTransformer,
        KBinsDiscretizer,
        MinMaxScaler,
        OneHotEncoder,
        OrdinalEncoder,
        StandardScaler,
    )

    def clip_log1p(x):
        return np.log1p(np.clip(x, 0, 100000))

    def hashed_cross(frame):
        a, b = frame.columns
        joined = frame[a].astype(str) + "\x1f" + frame[b].astype(str)
        h = pd.util.hash_pandas_object(joined, index=False).to_numpy()
        return (h % np.uint64(CROSS_BUCKETS)).astype(np.float64).reshape(-1, 1)

    parts = []
    for i in range(N_NUMERIC):
        kind = i // 5
        if kind == 0:
            pipe = make_pipeline(SimpleImputer(strategy="mean"), StandardScaler())
        elif kind == 1:
            pipe = make_pipeline(
                SimpleImputer(strategy="constant", fill_value=0),
                FunctionTransformer(clip_log1p, feature_names_out="one-to-one"),
                StandardScaler(),
            )
        elif kind == 2:
            pipe = make_pipeline(SimpleImputer(strategy="median"), MinMaxScaler())
        else:
            pipe = make_pipeline(
                SimpleImputer(strategy="median"),
                KBinsDiscretizer(n_bins=10, encode="ordinal", strategy="quantile", quantile_method="linear"),
            )
        parts.append((f"num_{i}", pipe, [f"num_{i}"]))
    if big_onehot:
        parts.append(("cat_0", OneHotEncoder(handle_unknown="ignore"), ["cat_0"]))
    else:
        parts.append(
            ("cat_0", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), ["cat_0"])
        )
    small = [f"cat_{k}" for k in range(1, N_CATEGORICAL)]
    parts.append(("small_cats", OneHotEncoder(handle_unknown="ignore"), small))
    for a, b in CROSSES:
        parts.append((f"{a}_x_{b}", FunctionTransformer(hashed_cross), [a, b]))
    return ColumnTransformer(parts)


def worker_sklearn(data: str, big_onehot: bool) -> dict:
    import numpy as np
    import pandas as pd

    df = pd.read_parquet(data)
    ct = _sklearn_pipeline(big_onehot)
    with PeakRSS() as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        x = ct.fit_transform(df)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    rng = np.random.default_rng(7)
    picks = rng.choice(len(df), ROW_SAMPLES_SKLEARN, replace=False)
    ct.transform(df.iloc[[0]])
    times = []
    for i in picks:
        one = df.iloc[[int(i)]]
        t = time.perf_counter()
        ct.transform(one)
        times.append(time.perf_counter() - t)
    p50, p99 = _percentiles(times)
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "peak_bytes": mem.delta_bytes,
        "peak_reset": mem.reset,
        "shape": list(x.shape),
        "sparse": bool(hasattr(x, "tocsr")),
        "row_p50_us": p50,
        "row_p99_us": p99,
        "row_samples": len(times),
    }


def _run_worker(kind: str, data: Path, spec: Path) -> dict:
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_features", "--worker", kind, str(data), str(spec)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {kind} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def main() -> None:
    n = _rows()
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        data = Path(tmp) / "data.parquet"
        spec = Path(tmp) / "spec.yaml"
        t = time.perf_counter()
        make_data(n, data)
        spec.write_text(spec_yaml())
        print(
            f"table: {n:,} rows, {N_NUMERIC} numeric + {N_CATEGORICAL} categorical columns "
            f"(cat_0: {min(n, BIG_CARDINALITY):,} distinct), {len(CROSSES)} crosses "
            f"(generated in {time.perf_counter() - t:.1f} s)",
            flush=True,
        )
        ours = _run_worker("ours", data, spec)
        ours_sp = _run_worker("ours-sparse", data, spec)
        sk_ord = _run_worker("sklearn-ordinal", data, spec)
        sk_ohe = _run_worker("sklearn-onehot", data, spec)

    print(
        f"ours dense:  {ours['shape'][0]:,} x {ours['shape'][1]} float32 ndarray (what XGBoost/TensorFlow get)"
    )
    print(
        f"ours sparse: {ours_sp['shape'][0]:,} x {ours_sp['shape'][1]} float32 CSR, {ours_sp['nnz']:,} stored values"
    )
    print(
        f"sklearn A:   OrdinalEncoder for cat_0 (same output as ours), {sk_ord['shape']} sparse={sk_ord['sparse']}"
    )
    print(f"sklearn B:   OneHotEncoder for cat_0, {sk_ohe['shape']} sparse={sk_ohe['sparse']}")
    if not ours["peak_reset"]:
        print("note: could not reset the peak RSS counter; memory figures include data loading")
    print()
    print(
        f"{'':20s}{'fit+transform':>14s}{'(CPU time)':>12s}{'peak memory':>13s}{'row p50':>13s}{'row p99':>13s}"
    )

    def us(v):
        return f"{v:,.1f} us" if v is not None else "-"

    for label, r in [
        ("ours (dense)", ours),
        ("ours (sparse CSR)", ours_sp),
        ("sklearn A", sk_ord),
        ("sklearn B", sk_ohe),
    ]:
        print(
            f"{label:20s}{r['seconds']:>12.2f} s{r['cpu_seconds']:>10.2f} s{_mib(r['peak_bytes']):>13s}"
            f"{us(r.get('row_p50_us')):>13s}{us(r.get('row_p99_us')):>13s}"
        )
    print()
    for label, r in [("ours (dense)", ours), ("ours (sparse CSR)", ours_sp)]:
        print(
            f"{label:18s} CPU-time ratio {r['cpu_seconds'] / sk_ord['cpu_seconds']:.2f}x (A) / "
            f"{r['cpu_seconds'] / sk_ohe['cpu_seconds']:.2f}x (B), wall-time ratio {r['seconds'] / sk_ord['seconds']:.2f}x (A) / "
            f"{r['seconds'] / sk_ohe['seconds']:.2f}x (B)"
            f"  [target <= 0.5x];  memory ratio {r['peak_bytes'] / sk_ord['peak_bytes']:.2f}x (A) / "
            f"{r['peak_bytes'] / sk_ohe['peak_bytes']:.2f}x (B)  [target <= 0.6x]"
        )
    dense_out = ours["shape"][0] * ours["shape"][1] * 4
    print(
        f"(the dense float32 output alone is {_mib(dense_out)}: {dense_out / sk_ord['peak_bytes']:.2f}x sklearn A's peak)"
    )
    print(
        f"single row: p50 {ours['row_p50_us']:.1f} us [target <= 50], p99 {ours['row_p99_us']:.1f} us [target <= 200]; "
        f"vs sklearn A {sk_ord['row_p50_us'] / 1000:,.1f} ms / B {sk_ohe['row_p50_us'] / 1000:,.1f} ms (p50): "
        f"{sk_ord['row_p50_us'] / ours['row_p50_us']:,.0f}x / {sk_ohe['row_p50_us'] / ours['row_p50_us']:,.0f}x faster"
    )
    print(
        f"rows sampled: ours {ours['row_samples']}, sklearn {sk_ord['row_samples']} each; "
        f"row transform bit-identical to the batch rows for all sampled rows: {ours['row_identical']}"
    )


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        kind, data_path, spec_path = sys.argv[2], sys.argv[3], sys.argv[4]
        if kind in ("ours", "ours-sparse"):
            result = worker_ours(data_path, Path(spec_path).read_text(), sparse=kind == "ours-sparse")
        else:
            result = worker_sklearn(data_path, big_onehot=kind == "sklearn-onehot")
        print(json.dumps(result))
    else:
        main()
