"""An evaluation's results as a terminal table, JSON, and a PNG chart comparing the models."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path, PurePath

from imgsearch.evaluation.runner import ModelResult


def metric_names(results: list[ModelResult]) -> list[str]:
    """The metrics any model has, in the order they were computed."""
    return list(dict.fromkeys(name for result in results for name in result.metrics))


def column(metric: str) -> str:
    """A metric's name in the table: text_to_image_R@5 -> t2i_R@5, mean_per_class_recall -> class_recall."""
    return (
        metric.replace("text_to_image_", "t2i_")
        .replace("image_to_text_", "i2t_")
        .replace("mean_per_class_recall", "class_recall")
    )


def short_name(model: str) -> str:
    """A model as a table or chart labels it: a local directory by its last part; a pair as both."""
    return "+".join(PurePath(part).name if PurePath(part).is_absolute() else part for part in model.split("+"))


def table(results: list[ModelResult]) -> str:
    """One row per model, one column per metric, the best of each column marked with *."""
    names = metric_names(results)
    best = {name: max(result.metrics.get(name, float("-inf")) for result in results) for name in names}
    header = ["model", *map(column, names), "images"]
    rows = []
    for result in results:
        cells = [short_name(result.model)]
        for name in names:
            value = result.metrics.get(name)
            mark = "*" if value is not None and len(results) > 1 and value == best[name] else " "
            cells.append("-" if value is None else f"{value:.3f}{mark}")
        cells.append(
            f"{result.embedded + result.cached}" + (f" ({len(result.skipped)} unreadable)" if result.skipped else "")
        )
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(row, widths))
        )
        for row in [header, *rows]
    ]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])


def as_json(results: list[ModelResult]) -> list[dict]:
    return [asdict(result) for result in results]


def chart(results: list[ModelResult], path: Path, title: str = "") -> Path:
    """A grouped bar chart: one group per metric, one bar per model. Needs matplotlib (the [eval] extra)."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("the chart needs matplotlib: pip install 'imgsearch[eval]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metric_names(results)
    width = 0.8 / len(results)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(names) + 2), 4.2))
    for i, result in enumerate(results):
        positions = [n + (i - (len(results) - 1) / 2) * width for n in range(len(names))]
        axes.bar(positions, [result.metrics.get(name, 0.0) for name in names], width, label=short_name(result.model))
    axes.set_xticks(range(len(names)), [column(name) for name in names], rotation=30, ha="right")
    axes.set_ylim(0, 1)
    axes.set_ylabel("score (higher is better)")
    axes.set_title(title or "imgsearch evaluate")
    axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
