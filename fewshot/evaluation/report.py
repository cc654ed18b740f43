"""Writing an evaluation's report: results.json, results.md, episodes.csv, accuracy_vs_shot.png
(and tsne.png when the result carries a t-SNE embedding). Every file is written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from episodes.atomic import atomic_write_bytes
from fewshot.evaluation import stats
from fewshot.evaluation.evaluate import EvalResult
from fewshot.figures import pyplot, save_figure, short_data_name, wrap


def results_markdown(result: EvalResult) -> str:
    metric = "error rate (%)" if result.challenge else "accuracy (%)"
    ds = result.dataset
    lines = [f"# Few-shot evaluation: {ds.get('name') or 'data'}", "",
             f"{result.way}-way, {result.query} queries per class; {metric}, mean ± 95% CI over episodes "
             f"(1.96·s/√E, ddof=1). Transform `{result.config.get('transform')}`, distance "
             f"`{result.config.get('distance')}`; data fingerprint `{ds.get('fingerprint')}`; checkpoint "
             f"`{result.checkpoint.get('path')}` (hash `{result.checkpoint.get('hash')}`). "
             f"Test-time augmentation: {_tta_text(result.config.get('tta'))}.", "",
             "| head | " + " | ".join(f"{s}-shot" for s in result.shots) + " |",
             "|---|" + "---|" * len(result.shots)]
    for h in result.heads:
        cells = []
        for s in result.shots:
            mean, ci = stats.mean_ci(result.accuracy[(h, s)])
            best = result.best(s) == h
            text = f"{100 * ((1 - mean) if result.challenge else mean):.2f} ± {100 * ci:.2f}"
            cells.append(f"**{text}**" if best else text)
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    pairs = result.paired()
    if pairs:
        lines += ["", "## Paired comparisons", "",
                  "Same episodes for every head. diff = mean per-episode accuracy difference (a − b, points) "
                  "± 95% CI; p: paired t-test, Holm-adjusted over all pairs and shots; Wilcoxon (Pratt) p "
                  "as a distribution-free check.", "",
                  "| shot | a | b | diff | p (t) | p (Holm) | p (Wilcoxon) | wins/ties/losses |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in pairs:
            lines.append(f"| {r['shot']} | {r['head_a']} | {r['head_b']} | {100 * r['diff']:+.2f} ± "
                         f"{100 * r['ci95']:.2f} | {r['p_value']:.2g} | {r['p_holm']:.2g} | "
                         f"{r['p_wilcoxon']:.2g} | {r['wins']}/{r['ties']}/{r['losses']} |")
        lines += ["", "## Verdicts", ""] + [f"- {r['shot']}-shot: {r['verdict']}" for r in pairs]
    if result.retrieval is not None:
        r = result.retrieval
        lines += ["", "## Retrieval", "",
                  f"Every one of the {r['images']} images ({r['classes']} classes) queries all the others "
                  f"(leave-one-out), {r['distance']} distance; pytorch-metric-learning's AccuracyCalculator "
                  f"({r['seconds']:.2f} s).", "",
                  "| precision@1 | R-precision | MAP@R |", "|---|---|---|",
                  "| " + " | ".join(f"{100 * r[k]:.2f}" for k in ("precision_at_1", "r_precision",
                                                                  "map_at_r")) + " |"]
    return "\n".join(lines) + "\n"


def _tta_text(record: dict | None) -> str:
    from fewshot.evaluation.tta import TTA

    return TTA.from_dict(record).describe() if record else "none recorded"


def episodes_csv(result: EvalResult) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["shot", "episode", *result.heads])
    for s in result.shots:
        cols = [result.accuracy[(h, s)] for h in result.heads]
        for e in range(len(cols[0])):
            w.writerow([s, e, *(f"{c[e]:.6g}" for c in cols)])
    return buf.getvalue()


def plot_accuracy_vs_shot(result: EvalResult, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for h in result.heads:
        pts = [stats.mean_ci(result.accuracy[(h, s)]) for s in result.shots]
        y = [100 * ((1 - m) if result.challenge else m) for m, _ in pts]
        ax.errorbar(result.shots, y, yerr=[100 * c for _, c in pts], marker="o", capsize=3, label=h)
    ax.set_xlabel("shots per class")
    ax.set_xticks(result.shots)
    ax.set_ylabel(("error rate" if result.challenge else "accuracy") + " (%), 95% CI")
    # the data set briefly (kind and split); its full spec is in results.md / results.json
    ax.set_title(f"{short_data_name(result.dataset.get('name'))}: {result.way}-way")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def plot_tsne(result: EvalResult, path: Path) -> None:
    import numpy as np

    plt = pyplot()

    t = result.tsne
    pts, labels = np.asarray(t["points"]), np.asarray(t["labels"])
    # the legend sits beside the points, never on them; long class names wrap
    fig, ax = plt.subplots(figsize=(8, 6), dpi=120)
    for c, name in t["class_names"].items():
        m = labels == int(c)
        ax.scatter(pts[m, 0], pts[m, 1], s=10, label=wrap(name, 22))
    ax.set_title(f"t-SNE of novel-class features: {short_data_name(result.dataset.get('name'), 36)}",
                 fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title="class", title_fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_report(result: EvalResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the report files into ``out_dir``; returns their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ("results.json", "results.md", "episodes.csv", "accuracy_vs_shot.png")
    paths = {name: out / name for name in names}
    atomic_write_bytes(paths["results.json"], json.dumps(result.to_dict(), indent=2).encode())
    atomic_write_bytes(paths["results.md"], results_markdown(result).encode())
    atomic_write_bytes(paths["episodes.csv"], episodes_csv(result).encode())
    plot_accuracy_vs_shot(result, paths["accuracy_vs_shot.png"])
    if result.tsne is not None:
        paths["tsne.png"] = out / "tsne.png"
        plot_tsne(result, paths["tsne.png"])
    return paths
