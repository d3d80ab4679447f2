"""Small server-rendered SVG charts for the ML pages: a sparkline and a line chart.

No JavaScript and nothing from the internet: the pages show these as ``<img>`` (``image/svg+xml``).
Every label is XML-escaped; coordinates are numbers formatted here. Hand-written because it is two
functions of a few lines each (a plotting library would add a JS bundle or a matplotlib round trip
per request for the same picture).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

__all__ = ["PALETTE", "line_chart", "message_svg", "sparkline"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
_FONT = 'font-family="system-ui,sans-serif"'


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _fmt(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"


def message_svg(text: str, width: int = 420, height: int = 60) -> str:
    """A small image saying ``text`` (e.g. "no data"), so an ``<img>`` always shows something."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><rect width="100%" height="100%" fill="#fafafa" stroke="#ddd"/>'
        f'<text x="{width / 2}" y="{height / 2 + 4}" text-anchor="middle" font-size="13" {_FONT} '
        f'fill="#666">{escape(text)}</text></svg>'
    )


def sparkline(values: Sequence[float | None], width: int = 120, height: int = 28) -> str:
    """A tiny trend line of ``values`` (in order); the last point is marked."""
    points = [(i, float(v)) for i, v in enumerate(values) if v is not None and math.isfinite(float(v))]
    if not points:
        return message_svg("no data", width, height)
    lo = min(v for _, v in points)
    hi = max(v for _, v in points)
    span = hi - lo or 1.0
    n = max(len(values) - 1, 1)
    pad = 3

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + (width - 2 * pad) * (i / n if len(values) > 1 else 0.5), pad + (height - 2 * pad) * (
            1 - (v - lo) / span if hi > lo else 0.5
        )

    coords = [xy(i, v) for i, v in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    lx, ly = coords[-1]
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><polyline fill="none" stroke="{PALETTE[0]}" stroke-width="1.5" '
        f'points="{path}"/><circle cx="{lx:.1f}" cy="{ly:.1f}" r="2.5" fill="{PALETTE[1]}"/></svg>'
    )


def line_chart(
    series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 560,
    height: int = 340,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
    markers: bool = True,
    integer_x: bool = False,
) -> str:
    """A line chart of ``series`` = ``[(label, xs, ys), ...]`` with axes, ticks and a legend."""
    xs_all = _finite([x for _, xs, _ in series for x in xs])
    ys_all = _finite([y for _, _, ys in series for y in ys])
    if not xs_all or not ys_all:
        return message_svg(f"{title}: no data" if title else "no data", width, 60)
    x0, x1 = x_range or (min(xs_all), max(xs_all))
    y0, y1 = y_range or (min(ys_all), max(ys_all))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - abs(y0) * 0.05 - 0.01, y1 + abs(y1) * 0.05 + 0.01
    elif y_range is None:
        pad = (y1 - y0) * 0.08
        y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = 58, 16, 30 if title else 12, 42
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + pw * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + ph * (1 - (y - y0) / (y1 - y0))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" {_FONT} font-size="11">',
        '<rect width="100%" height="100%" fill="#fff"/>',
    ]
    if title:
        out.append(f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" '
                   f'font-weight="600">{escape(title)}</text>')
    # grid and ticks
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        y = py(yv)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">{_fmt(yv)}</text>')
    if integer_x:
        ticks = sorted(set(int(x) for x in xs_all))
        if len(ticks) > 12:
            step = math.ceil(len(ticks) / 12)
            ticks = ticks[::step]
    else:
        ticks = [x0 + (x1 - x0) * i / 5 for i in range(6)]
    for xv in ticks:
        x = px(xv)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="#f3f3f3"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 15}" text-anchor="middle" fill="#444">'
                   f'{xv if integer_x else _fmt(xv)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    if x_label:
        out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
                   f'{escape(y_label)}</text>')
    if diagonal:
        out.append(f'<line x1="{px(max(x0, y0)):.1f}" y1="{py(max(x0, y0)):.1f}" x2="{px(min(x1, y1)):.1f}" '
                   f'y2="{py(min(x1, y1)):.1f}" stroke="#aaa" stroke-dasharray="4 3"/>')
    for k, (label, xs, ys) in enumerate(series):
        color = PALETTE[k % len(PALETTE)]
        pts = [(px(float(x)), py(float(y))) for x, y in zip(xs, ys)
               if y is not None and math.isfinite(float(y)) and math.isfinite(float(x))]
        if not pts:
            continue
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        if markers and len(pts) <= 60:
            out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in pts)
        ly = top + 14 + 16 * k
        out.append(f'<rect x="{left + 10}" y="{ly - 9}" width="12" height="3" fill="{color}"/>')
        out.append(f'<text x="{left + 28}" y="{ly - 4}" fill="#222">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)
