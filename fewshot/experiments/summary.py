"""The summary of an ablation: accuracy per cell across seeds, paired verdicts, tables, summary.md.

Every two cells that differ in exactly one varying factor (other than the shot) are compared on the
same episodes, paired by seed and episode, with Holm-adjusted p-values over the whole table
(:mod:`fewshot.evaluation.stats` holds the maths: :func:`~fewshot.evaluation.stats.paired_by_seed`,
:func:`~fewshot.evaluation.stats.holm`, :func:`~fewshot.evaluation.stats.seed_verdict`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from episodes.atomic import atomic_write_text
from fewshot.evaluation import stats
from fewshot.experiments.grid import FACTORS, Grid, format_level
from fewshot.experiments.plots import plot_summary

__all__ = ["summarize", "format_table", "format_comparisons", "write_summary"]


def _collect(grid: Grid, doc: dict) -> dict:
    """``{(cell_id, set, transform, head, shot): {seed: correct/queries [E]}}`` for the grid's cells."""
    ids = {c.id for c in grid.cells()}
    table: dict = {}
    for run in doc["runs"].values():
        if run["cell"] not in ids or run["seed"] not in grid.seeds:
            continue
        for r in run["records"]:
            if (r["head"] not in grid.factors["head"] or r["shot"] not in grid.factors["shot"]
                    or r["transform"] not in grid.factors["transform"]):
                continue
            key = (run["cell"], r["set"], r["transform"], r["head"], r["shot"])
            table.setdefault(key, {})[run["seed"]] = np.asarray(r["correct"], dtype=np.float64) / r["queries"]
    return table


def summarize(grid: Grid, doc: dict) -> dict:
    """Per-cell mean ± CI across seeds, and paired verdicts between cells that differ in one factor."""
    table = _collect(grid, doc)
    cells = {c.id: c for c in grid.cells()}
    rows = []
    order = [(c.id, es.name, p["transform"], p["head"], p["shot"]) for c in cells.values()
             for es in grid.eval_sets for p in grid.eval_points()]
    for cid, set_name, transform, head, shot in order:
        by_seed = table.get((cid, set_name, transform, head, shot))
        if not by_seed:
            continue
        means = np.array([v.mean() for _, v in sorted(by_seed.items())])
        pooled = np.concatenate(list(by_seed.values()))
        factors = {**cells[cid].factors, "transform": transform, "head": head, "shot": shot}
        rows.append({"cell": cid, "set": set_name, "factors": factors, "seeds": len(means),
                     "mean": float(means.mean()), "ci95_seeds": stats.seed_ci(means),
                     "ci95_episodes": stats.mean_ci(pooled)[1],
                     "per_seed": means.tolist()})
    # paired verdicts: every two rows on the same set that differ in exactly one varying factor
    by_key: dict = {}
    for row in rows:
        by_key[(row["set"], json.dumps(row["factors"], sort_keys=True, default=str))] = row
    comparisons = []
    factor_names = [f for f in grid.varying if f != "shot"]   # more shots winning is no finding
    for i, ra in enumerate(rows):
        for rb in rows[i + 1:]:
            if ra["set"] != rb["set"]:
                continue
            fa_, fb_ = ra["factors"], rb["factors"]
            diff = [k for k in set(fa_) & set(fb_) if fa_[k] != fb_[k]]
            one_sided = set(fa_) ^ set(fb_)   # factors of one training mode only (loss, episodic_head, ...)
            if len(diff) != 1 or diff[0] not in factor_names or (one_sided and diff[0] != "mode"):
                continue
            fa = table[(ra["cell"], ra["set"], ra["factors"]["transform"], ra["factors"]["head"],
                        ra["factors"]["shot"])]
            fb = table[(rb["cell"], rb["set"], rb["factors"]["transform"], rb["factors"]["head"],
                        rb["factors"]["shot"])]
            res = stats.paired_by_seed(fa, fb)
            if res is None:
                continue
            factor = diff[0]
            same = {k: v for k, v in {**fb_, **fa_}.items() if k != factor and k in grid.varying}
            comparisons.append({"set": ra["set"], "factor": factor, "a": ra["factors"].get(factor),
                                "b": rb["factors"].get(factor), "context": same, **res})
    rank = {f: i for i, f in enumerate(FACTORS)}
    level = {(f, json.dumps(v, default=str)): i for f, vs in grid.factors.items() for i, v in enumerate(vs)}
    set_rank = {s.name: i for i, s in enumerate(grid.eval_sets)}

    def order(c: dict) -> tuple:   # grid order: factor, set, then the levels of the other factors
        ctx = [level.get((k, json.dumps(v, default=str)), 0) for k, v in sorted(c["context"].items())]
        return rank[c["factor"]], set_rank.get(c["set"], 0), ctx

    comparisons.sort(key=order)
    _adjust(comparisons)
    return {"rows": rows, "comparisons": comparisons, "varying": factor_names}


def _adjust(comparisons: list[dict]) -> None:
    """Holm-adjusted p-values over all comparisons of the summary (one family), then the verdict."""
    if not comparisons:
        return
    for c, pa in zip(comparisons, stats.holm([c["p"] for c in comparisons])):
        c["p_holm"] = float(pa)
        c["verdict"] = stats.seed_verdict(format_level(c["a"]), format_level(c["b"]), c, float(pa))


def _p(p: float) -> str:
    return "n/a" if p != p else ("< 1e-6" if p < 1e-6 else f"{p:.2g}")


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.2f}"


def format_table(grid: Grid, summary: dict, markdown: bool = True) -> str:
    """The per-cell table (one row per cell and evaluation set), mean ± 95% CI across seeds."""
    shown = [f for f in FACTORS if f in grid.factors and (len(grid.factors[f]) > 1 or f in ("head", "shot"))]
    head = ["set", *shown, "accuracy %", "± CI (seeds)", "± CI (episodes)", "seeds"]
    lines = []
    for row in summary["rows"]:
        lines.append([row["set"], *(format_level(row["factors"].get(f, "-")) for f in shown),
                      _pct(row["mean"]),
                      _pct(row["ci95_seeds"]), _pct(row["ci95_episodes"]), str(row["seeds"])])
    return _render(head, lines, markdown)


def format_comparisons(summary: dict, markdown: bool = True) -> str:
    head = ["set", "factor", "A", "B", "where", "A - B (pts)", "± CI", "p (Holm)", "seeds agree", "verdict"]
    lines = []
    for c in summary["comparisons"]:
        where = ", ".join(f"{k}={format_level(v)}" for k, v in c["context"].items()) or "-"
        lines.append([c["set"], c["factor"], format_level(c["a"]), format_level(c["b"]), where,
                      f"{100 * c['diff']:+.2f}",
                      f"{100 * c['ci95']:.2f}", _p(c["p_holm"]), f"{c['seeds_agree']}/{c['seeds']}",
                      c["verdict"]])
    return _render(head, lines, markdown)


def _render(head: list[str], lines: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*line) for line in lines])


def write_summary(grid: Grid, summary: dict, out_dir: Path, *, command: str | None = None) -> Path:
    """``summary.md`` (tables, verdicts, plots) and ``summary.json`` in ``out_dir``."""
    out = Path(out_dir)
    plots = plot_summary(grid, summary, out / "plots") if summary["rows"] else []
    lines = [f"# Ablation: {grid.name}", ""]
    if grid.description:
        lines += [grid.description, ""]
    if command:
        lines += ["```bash", command, "```", ""]
    n_cells = len(grid.cells())
    trained = (f"{n_cells} trained encoder(s), scored, not trained (weights hash in each cell id)"
               if "checkpoint" in grid.factors else
               f"Training data `{grid.data}` (split {grid.split}), recipe `{grid.recipe or 'default'}`; "
               f"{n_cells} training cell(s) x {len(grid.seeds)} seed(s) {grid.seeds}")
    lines += [f"{trained}; "
              f"{grid.way}-way, {grid.query} queries per class, {grid.episodes} fixed episodes per "
              f"evaluation set (manifests in `episodes/`), seed {grid.episode_seed}.", ""]
    described = [f"`{s.name}` = `{s.data}`" + (f" ({s.split})" if s.split else "")
                 + (" within-group" if s.within_group else "") for s in grid.eval_sets]
    lines += ["Evaluation sets: " + "; ".join(described), ""]
    lines += ["## Accuracy per cell (mean over seeds ± 95% CI)", "", format_table(grid, summary), ""]
    if summary["comparisons"]:
        lines += ["## Paired comparisons (cells that differ in one factor)", "",
                  "Differences are paired by seed and episode; the CI and p-value come from a paired t-test "
                  "over all (seed, episode) pairs (`fewshot.evaluation.stats.paired`), p-values are "
                  "Holm-adjusted over "
                  "this table; a verdict needs adjusted p < 0.05 and every seed agreeing in sign.", "",
                  format_comparisons(summary), ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    path = out / "summary.md"
    atomic_write_text(path, "\n".join(lines))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return path

