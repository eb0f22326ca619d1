"""PNG timeline: replies each peer received around the migrations, one panel per function."""

from __future__ import annotations

from pathlib import Path


def render(timelines: dict, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fns = [fn for fn in timelines if timelines[fn]]
    if not fns:
        return
    fig, axes = plt.subplots(len(fns), 1, figsize=(12, 2.5 + 2.5 * len(fns)), squeeze=False)
    for ax, fn in zip(axes[:, 0], fns):
        rows = timelines[fn]
        for y, times in enumerate(rows.values()):
            ax.plot(times, [y] * len(times), "|", markersize=4, color="tab:blue")
        for run in results[fn]["runs"]:
            if run.get("rep", 1) == 1:  # the timeline is the first repetition's
                ax.axvspan(run["t_dump_start"], run["t_restored"], color="tab:red", alpha=0.15)
        step = max(1, len(rows) // 20)  # at most about 20 labels
        ax.set_yticks(range(0, len(rows), step))
        ax.set_yticklabels(list(rows)[::step], fontsize=6 if len(rows) > 10 else 8)
        ax.set_title(f"{fn.upper()}: replies seen by its peers; red: dump -> transfer -> restore")
        ax.set_xlabel("seconds since the first migration began (minus warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
