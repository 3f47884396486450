"""The run as a PNG chart: ratios to Starlette, one panel per measurement."""

# The report is typeset: its multiplication signs and en dashes are meant.
# ruff: noqa: RUF001, RUF002

from __future__ import annotations

import math
from pathlib import Path

from . import _apps, e2e
from .inprocess import PER_CHUNK, PER_RESPONSE, SPECS, summary
from .targets import Run, _median

OURS_COLOR = "#4c72b0"
PEER_COLOR = "#999999"


def chart(run: Run, path: Path) -> None:
    """Ratios to Starlette, median with min–max whiskers, one panel per measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, list[str], list[tuple[float, float, float]]]] = []
    ours = [v for v in run.variants if v.available and v.key not in (_apps.RAW, _apps.STARLETTE)]
    if run.inprocess is not None:
        samples = run.inprocess
        for measure, title in ((PER_CHUNK, "per chunk"), (PER_RESPONSE, "per response")):
            labels: list[str] = []
            values: list[tuple[float, float, float]] = []
            for variant in ours:
                for backend in samples.backends:
                    for spec in SPECS:
                        labels.append(f"{variant.key} {backend} {spec}")
                        values.append(
                            summary(
                                samples.ratios(backend, measure, spec, variant.key, _apps.STARLETTE)
                            )
                        )
            panels.append((f"in process, {title} (× Starlette)", labels, values))
    if run.e2e is not None:
        results = run.e2e
        labels = []
        values = []
        for e2e_variant in e2e.VARIANTS:
            if e2e_variant.key in results.available and e2e_variant.key != e2e_variant.base:
                labels.append(e2e_variant.key)
                values.append(summary(results.capacity_ratios(e2e_variant.key, e2e_variant.base)))
        panels.append(("end to end, chunks per server CPU second (× Starlette)", labels, values))
    if run.memory is not None:
        labels = []
        values = []
        for variant in ours:
            for spec in SPECS:
                mine = run.memory.per_stream.get((spec, variant.key), [])
                base = _median(run.memory.per_stream.get((spec, _apps.STARLETTE), []))
                labels.append(f"{variant.key} {spec}")
                values.append(summary([value / base for value in mine]))
        panels.append(("memory per open stream (× Starlette)", labels, values))

    if not panels:  # only the breakdown ran: it is a table, not a chart
        return
    heights = [max(len(labels), 3) for _, labels, _ in panels]
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 1.5 + 0.22 * sum(heights) + 0.5 * len(panels)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for axis, (title, labels, values) in zip(axes[:, 0], panels, strict=True):
        mids = [mid for _, mid, _ in values]
        lows = [mid - low for low, mid, _ in values]
        highs = [high - mid for _, mid, high in values]
        positions = list(range(len(labels)))
        colors = [
            PEER_COLOR if label.startswith("sse-starlette") else OURS_COLOR for label in labels
        ]
        axis.barh(positions, mids, xerr=[lows, highs], color=colors, capsize=2)
        axis.axvline(1.0, color="black", linewidth=0.8)
        axis.set_yticks(positions, labels, fontsize=7)
        axis.invert_yaxis()
        axis.set_title(title, fontsize=9)
        if any(high > 8 for _, _, high in values if not math.isnan(high)):
            axis.set_xscale("log")
        axis.tick_params(axis="x", labelsize=7)
    figure.suptitle(
        f"header_first_stream (blue) and sse-starlette (grey) vs Starlette "
        f"({run.started:%Y-%m-%d}"
        f"{', quick mode' if run.quick else ''})",
        fontsize=10,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=110)
    plt.close(figure)
