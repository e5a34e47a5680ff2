"""PNG plots of report charts (matplotlib, Agg backend), each returning the numbers it drew, read back from the axes."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, safe on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def draw(chart, path: Path) -> dict[str, list[float | None]]:
    """Draw a chart to a PNG at path (atomically) and return, per series, the values on the axes (None: not drawn)."""
    import io

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    drawn: dict[str, list[float | None]] = {}
    if chart.kind == "line":
        for label, values in chart.series.items():
            points = [(x, y) for x, y in zip(chart.x, values) if y is not None]
            line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            ys = dict(zip(line.get_xdata(), line.get_ydata()))
            drawn[label] = [float(ys[x]) if x in ys else None for x in chart.x]
        ax.set_xticks(list(chart.x))
    else:
        positions = list(range(len(chart.x)))
        stacked = chart.kind == "stacked"
        width = 0.8 if stacked else 0.8 / max(1, len(chart.series))
        bottom = [0.0] * len(positions)
        for k, (label, values) in enumerate(chart.series.items()):
            heights = [0.0 if v is None else v for v in values]
            offsets = positions if stacked else [p - 0.4 + width * (k + 0.5) for p in positions]
            bars = ax.bar(offsets, heights, width, bottom=bottom if stacked else None, label=label)
            drawn[label] = [None if v is None else float(b.get_height()) for v, b in zip(values, bars.patches)]
            if stacked:
                bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set_xticks(positions, [str(x) for x in chart.x], rotation=20 if len(chart.x) > 3 else 0, ha="right"
                      if len(chart.x) > 3 else "center", fontsize=8)
    ax.set_title(chart.title, fontsize=10)
    ax.set_xlabel(chart.x_label)
    ax.set_ylabel(chart.y_label)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    _write_bytes(Path(path), buffer.getvalue())
    return drawn


def _write_bytes(path: Path, data: bytes) -> None:
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
