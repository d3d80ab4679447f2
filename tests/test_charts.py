"""Evaluation charts: real PNG files with content, for binary and regression tasks."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from airflow_ml_provider.ml.charts import write_charts
from airflow_ml_provider.ml.metrics import MetricsError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _distinct_colours(path) -> int:
    """Number of distinct pixel colours: a blank canvas has 1, a drawn chart many."""
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    return len(np.unique(img.reshape(-1, img.shape[-1]), axis=0))


def test_binary_charts(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random(20_000) < 0.2).astype(int)  # large enough that curves get thinned
    s = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    paths = write_charts(tmp_path, y, s, importance={"age": 3.0, "city": 1.5, "x": 0.0}, task="binary")
    assert [p.name for p in paths] == [
        "roc.png",
        "pr.png",
        "ks.png",
        "lift.png",
        "gain.png",
        "feature_importance.png",
    ]
    for p in paths:
        assert p.parent == tmp_path
        w, h = _png_size(p)
        assert w >= 400 and h >= 250
        assert p.stat().st_size > 10_000, f"{p.name} is suspiciously small"
        assert _distinct_colours(p) > 20, f"{p.name} looks blank"
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_regression_charts_and_no_importance(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.normal(5, 2, 3000)
    paths = write_charts(tmp_path, y, y + rng.normal(0, 0.5, 3000), task="regression")
    assert [p.name for p in paths] == ["pred_vs_actual.png", "residuals.png"]
    for p in paths:
        _png_size(p)
        assert p.stat().st_size > 10_000


def test_single_class_still_draws(tmp_path):
    paths = write_charts(tmp_path, [1, 1, 1], [0.2, 0.5, 0.9], importance={})
    assert len(paths) == 6 and all(p.stat().st_size > 5_000 for p in paths)


def test_bad_input_fails_before_any_file(tmp_path):
    with pytest.raises(MetricsError, match="labels 0/1"):
        write_charts(tmp_path, [0, 3], [0.1, 0.2])
    with pytest.raises(MetricsError, match="unknown task 'ranking'"):
        write_charts(tmp_path, [0, 1], [0.1, 0.2], task="ranking")
    assert list(tmp_path.iterdir()) == []


def test_importing_charts_does_not_import_matplotlib():
    code = "import sys, airflow_ml_provider.ml.charts; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
