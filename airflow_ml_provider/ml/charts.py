"""Evaluation charts as PNG files, written beside the metrics JSON.

``write_charts(out_dir, y_true, y_score, importance=None, task="binary")`` writes, for
``task="binary"``:

* ``roc.png`` -- ROC curve with its AUC and the diagonal;
* ``pr.png`` -- precision/recall curve with average precision and the base rate;
* ``ks.png`` -- cumulative TPR and FPR against the score threshold, KS marked;
* ``lift.png`` -- lift per decile (and cumulative lift);
* ``gain.png`` -- cumulative gain curve against the random and perfect models;

for ``task="regression"``: ``pred_vs_actual.png`` and ``residuals.png``; and for both, with
``importance`` (feature -> score) ``feature_importance.png`` (top 30 features).

matplotlib is imported inside the functions with the non-interactive Agg backend, so importing
this module is cheap and it works without a display. Curves with more than 2,000 points are thinned
(keeping both ends) so a chart of a million rows costs the same as one of ten thousand.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from airflow_ml_provider.ml import metrics as M

MAX_POINTS = 2000
TOP_FEATURES = 30
_DPI = 100
_SIZE = (6.0, 4.5)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _thin(*arrays: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, ...]:
    n = len(arrays[0])
    if n <= max_points:
        return arrays
    idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.intp))
    return tuple(a[idx] for a in arrays)


#: The PNG text chunk of ``roc.png`` holding the curve's points (JSON ``{"fpr": [...], "tpr": [...]}``,
#: at most :data:`ROC_POINTS` points): the UI overlays the ROC curves of two versions from it.
ROC_POINTS_KEY = "airflow-ml-roc"
ROC_POINTS = 201


def _save(fig, path: Path, metadata: Mapping[str, str] | None = None) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=_DPI, format="png", metadata=dict(metadata) if metadata else None)
    os.replace(tmp, path)
    return path


def roc_chart(path: Path, y_true: Any, y_score: Any) -> Path:
    plt = _pyplot()
    fpr, tpr, _ = M.roc_curve(y_true, y_score)
    auc = M.auc_score(y_true, y_score)
    fpr, tpr = _thin(fpr, tpr)
    fig, ax = plt.subplots(figsize=_SIZE)
    try:
        ax.plot(fpr, tpr, lw=2, label=f"model (AUC = {auc:.4f})" if auc is not None else "model")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="random")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="False positive rate",
            ylabel="True positive rate",
            title="ROC curve",
        )
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        return _save(fig, path, {ROC_POINTS_KEY: roc_points_json(fpr, tpr)})
    finally:
        plt.close(fig)


def roc_points_json(fpr: Any, tpr: Any, max_points: int = ROC_POINTS) -> str:
    """The ROC curve thinned to ``max_points`` points (both ends kept), as compact JSON."""
    import json

    f, t = _thin(np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float), max_points=max_points)
    return json.dumps({"fpr": [round(float(v), 5) for v in f], "tpr": [round(float(v), 5) for v in t]},
                      separators=(",", ":"))


def read_roc_points(png: bytes) -> dict[str, list[float]] | None:
    """The ROC points stored in a ``roc.png`` written by :func:`roc_chart` (None if it has none)."""
    import io
    import json

    from PIL import Image

    try:
        with Image.open(io.BytesIO(png)) as img:
            text = (getattr(img, "text", None) or {}).get(ROC_POINTS_KEY)
        data = json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - not a PNG, or a chart written before the points were stored
        return None
    if not isinstance(data, dict) or not isinstance(data.get("fpr"), list) or not isinstance(data.get("tpr"), list):
        return None
    if len(data["fpr"]) != len(data["tpr"]) or not data["fpr"]:
        return None
    return {"fpr": [float(v) for v in data["fpr"]], "tpr": [float(v) for v in data["tpr"]]}


def pr_chart(path: Path, y_true: Any, y_score: Any) -> Path:
    plt = _pyplot()
    precision, recall, _ = M.precision_recall_curve(y_true, y_score)
    ap = M.average_precision(y_true, y_score)
    base = float(np.mean(np.asarray(y_true, dtype=np.float64)))
    recall, precision = _thin(np.r_[0.0, recall], np.r_[precision[0], precision])
    fig, ax = plt.subplots(figsize=_SIZE)
    try:
        ax.step(
            recall,
            precision,
            where="post",
            lw=2,
            label=f"model (AP = {ap:.4f})" if ap is not None else "model",
        )
        ax.axhline(base, ls="--", color="grey", label=f"base rate {base:.3f}")
        ax.set(
            xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall", ylabel="Precision", title="Precision-recall curve"
        )
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def ks_chart(path: Path, y_true: Any, y_score: Any) -> Path:
    plt = _pyplot()
    fpr, tpr, _ = M.roc_curve(y_true, y_score)
    ks, ks_thr = M.ks_statistic(y_true, y_score)
    # x axis: share of rows scored at or above the threshold (population depth)
    yt = np.asarray(y_true, dtype=np.float64)
    pos = yt.sum()
    depth = (tpr * pos + fpr * (len(yt) - pos)) / len(yt)
    i = int(np.argmax(tpr - fpr))
    depth_t, tpr_t, fpr_t = _thin(depth, tpr, fpr)
    fig, ax = plt.subplots(figsize=_SIZE)
    try:
        ax.plot(depth_t, tpr_t, lw=2, label="cumulative positives (TPR)")
        ax.plot(depth_t, fpr_t, lw=2, label="cumulative negatives (FPR)")
        if ks is not None:
            ax.vlines(
                depth[i],
                fpr[i],
                tpr[i],
                colors="red",
                linestyles="--",
                label=f"KS = {ks:.4f} at score {ks_thr:.4g}" if ks_thr is not None else f"KS = {ks:.4f}",
            )
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="Share of population (by descending score)",
            ylabel="Cumulative share",
            title="KS chart",
        )
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def lift_chart(path: Path, y_true: Any, y_score: Any, bins: int = 10) -> Path:
    plt = _pyplot()
    t = M.lift_table(y_true, y_score, bins=bins)
    x = np.arange(1, len(t["lift"]) + 1)
    fig, ax = plt.subplots(figsize=_SIZE)
    try:
        ax.bar(x, t["lift"], color="tab:blue", alpha=0.7, label="lift of the bin")
        ax.plot(x, t["cumulative_lift"], "o-", color="tab:orange", lw=2, label="cumulative lift")
        ax.axhline(1.0, ls="--", color="grey", label="random")
        ax.set(xticks=x, xlabel=f"Score bin (1 = top {100 / len(x):.0f}%)", ylabel="Lift", title="Lift chart")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3, axis="y")
        return _save(fig, path)
    finally:
        plt.close(fig)


def gain_chart(path: Path, y_true: Any, y_score: Any) -> Path:
    plt = _pyplot()
    fpr, tpr, _ = M.roc_curve(y_true, y_score)
    yt = np.asarray(y_true, dtype=np.float64)
    pos = yt.sum()
    depth = (tpr * pos + fpr * (len(yt) - pos)) / len(yt)
    depth, tpr = _thin(depth, tpr)
    base = pos / len(yt)
    fig, ax = plt.subplots(figsize=_SIZE)
    try:
        ax.plot(depth, tpr, lw=2, label="model")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="random")
        if base > 0:
            ax.plot([0, base, 1], [0, 1, 1], ls=":", color="green", label="perfect")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="Share of population (by descending score)",
            ylabel="Share of positives captured",
            title="Cumulative gain",
        )
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def importance_chart(path: Path, importance: Mapping[str, float], top: int = TOP_FEATURES) -> Path:
    plt = _pyplot()
    items = sorted(((str(k), float(v)) for k, v in importance.items()), key=lambda kv: kv[1], reverse=True)[
        :top
    ]
    items.reverse()  # largest at the top of a horizontal bar chart
    height = max(2.5, 0.28 * len(items) + 1.2)
    fig, ax = plt.subplots(figsize=(7.0, height))
    try:
        if items:
            ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
        else:
            ax.text(0.5, 0.5, "no feature importance", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel="importance", title=f"Feature importance (top {len(items)})")
        ax.grid(alpha=0.3, axis="x")
        return _save(fig, path)
    finally:
        plt.close(fig)


def pred_vs_actual_chart(path: Path, y_true: Any, y_pred: Any) -> Path:
    plt = _pyplot()
    yt = np.asarray(y_true, dtype=np.float64)
    yp = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if len(yt) > 5000:
        idx = np.random.default_rng(0).choice(len(yt), 5000, replace=False)
        yt, yp = yt[idx], yp[idx]
    lo, hi = float(min(yt.min(), yp.min())), float(max(yt.max(), yp.max()))
    fig, ax = plt.subplots(figsize=_SIZE)
    try:
        ax.scatter(yt, yp, s=6, alpha=0.4)
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", label="y = x")
        ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def residuals_chart(path: Path, y_true: Any, y_pred: Any) -> Path:
    plt = _pyplot()
    res = np.asarray(y_pred, dtype=np.float64).reshape(-1) - np.asarray(y_true, dtype=np.float64)
    fig, ax = plt.subplots(figsize=_SIZE)
    try:
        ax.hist(res, bins=50, color="tab:blue", alpha=0.8)
        ax.axvline(0, ls="--", color="grey")
        ax.set(xlabel="prediction - actual", ylabel="rows", title="Residuals")
        ax.grid(alpha=0.3)
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_charts(
    out_dir: str | os.PathLike,
    y_true: Any,
    y_score: Any,
    importance: Mapping[str, float] | None = None,
    task: str = "binary",
) -> list[Path]:
    """Write every chart for ``task`` into ``out_dir``; returns the PNG paths in a fixed order.

    Inputs are validated as by :mod:`airflow_ml_provider.ml.metrics` (``MetricsError`` on NaN
    scores, length mismatch, non-0/1 labels for ``binary``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yt, ys = M._prep(y_true, y_score)
    paths: list[Path] = []
    if task == "binary":
        M._binary_labels(yt)
        paths.append(roc_chart(out / "roc.png", yt, ys))
        paths.append(pr_chart(out / "pr.png", yt, ys))
        paths.append(ks_chart(out / "ks.png", yt, ys))
        paths.append(lift_chart(out / "lift.png", yt, ys))
        paths.append(gain_chart(out / "gain.png", yt, ys))
    elif task == "regression":
        paths.append(pred_vs_actual_chart(out / "pred_vs_actual.png", yt, ys))
        paths.append(residuals_chart(out / "residuals.png", yt, ys))
    else:
        raise M.MetricsError(f"unknown task {task!r}; expected 'binary' or 'regression'")
    if importance is not None:
        paths.append(importance_chart(out / "feature_importance.png", importance))
    return paths
