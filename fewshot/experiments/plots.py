"""Plots of an ablation summary: accuracy vs shot per head, and one bar chart per varying factor."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fewshot.evaluation.stats import seed_ci
from fewshot.experiments.grid import Grid, format_level

__all__ = ["plot_summary"]


def plot_summary(grid: Grid, summary: dict, out_dir: Path) -> list[Path]:
    """Accuracy vs shot per head (one panel per evaluation set) and one bar chart per varying factor."""
    from fewshot.figures import pyplot, save_figure, shorten, wrap

    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summary["rows"]
    set_names = [s.name for s in grid.eval_sets if any(r["set"] == s.name for r in rows)]
    paths = []

    def marginal(set_name: str, **where) -> tuple[float, float]:
        chosen = [r for r in rows if r["set"] == set_name
                  and all(r["factors"].get(k) == v for k, v in where.items())]
        if not chosen:
            return float("nan"), float("nan")
        n = len(chosen[0]["per_seed"])
        per_seed = np.array([r["per_seed"] for r in chosen if len(r["per_seed"]) == n])
        means = per_seed.mean(0)
        return float(means.mean()), seed_ci(means)

    fig, axes = plt.subplots(1, len(set_names), figsize=(max(6.5, 5.5 * len(set_names)), 4.5), squeeze=False,
                             sharey=True)
    shots = sorted(grid.factors["shot"])
    cells = grid.cells()
    # one line per head; per head and training cell when there are a few cells (else their mean)
    per_cell = 1 < len(cells) <= 4
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, set_name in zip(axes[0], set_names):
        for hi, head in enumerate(grid.factors["head"]):
            for ci_, cell in enumerate(cells if per_cell else [None]):
                where = {"head": head} if cell is None else {"head": head, **cell.factors}
                stats = [marginal(set_name, shot=k, **where) for k in shots]
                m = np.array([s[0] for s in stats]) * 100
                ci = np.nan_to_num(np.array([s[1] for s in stats]) * 100)
                factors = cell.factors.items() if cell is not None else ()
                shown = [f"{k}={format_level(v)}" for k, v in factors if k in grid.varying]
                label = " | ".join([head, ", ".join(shown)]) if shown else head
                ax.errorbar(shots, m, yerr=ci, marker="o", capsize=3, label=label,
                            color=colors[hi % len(colors)], linestyle=styles[ci_ % len(styles)])
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(shots)
        ax.set_xticklabels([str(s) for s in shots])
        ax.set_xlabel("shots")
        ax.set_ylabel(f"{grid.way}-way accuracy (%)")
        ax.set_title(shorten(set_name, 40))
        ax.grid(alpha=0.3)
        ax.set_ylim(top=min(ax.get_ylim()[1], 101))   # a few-seed CI may pass 100%; accuracy cannot
    # one legend for all panels, below them: it never covers a line, however long its labels
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(f"{shorten(grid.name, 80)}\naccuracy vs shot (mean over seeds ± 95% CI)", fontsize=10)
    ncol = 1 if len(labels) <= 2 else min(len(set_names) * 2, 4, -(-len(labels) // 2))
    rows_ = -(-len(labels) // ncol)
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, height + 0.2 * rows_)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, (0.1 + 0.2 * rows_) / (height + 0.2 * rows_), 1, 1))
    path = out_dir / "accuracy_vs_shot.png"
    save_figure(fig, path, dpi=110)
    paths.append(path)

    for factor in grid.varying:
        if factor in ("shot",):
            continue
        levels = grid.factors[factor]
        groups = [(s, k) for s in set_names for k in shots]
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * len(levels) / 2 + 2), 4))
        width = 0.8 / len(levels)
        for j, level in enumerate(levels):
            stats = [marginal(s, shot=k, **{factor: level}) for s, k in groups]
            m = np.array([st[0] for st in stats]) * 100
            ci = np.nan_to_num(np.array([st[1] for st in stats]) * 100)
            ax.bar(np.arange(len(groups)) + (j - (len(levels) - 1) / 2) * width, m, width, yerr=ci, capsize=2,
                   label=format_level(level))
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels([f"{wrap(s, 14)}\n{k}-shot" for s, k in groups], fontsize=8)
        ax.set_ylabel(f"{grid.way}-way accuracy (%)")
        ax.set_title(f"{shorten(grid.name, 60)}: {factor}\n(mean over the other factors and seeds ± 95% CI)",
                     fontsize=9)
        ax.legend(title=factor, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        lo = np.nanmin([r["mean"] for r in rows]) * 100
        ax.set_ylim(max(0, lo - 10), 100)
        fig.tight_layout()
        path = out_dir / f"factor_{factor}.png"
        save_figure(fig, path, dpi=110)
        paths.append(path)
    return paths

