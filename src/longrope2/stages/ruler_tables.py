"""The paper's tables from the RULER stage's per-sample scores, every cell with its sample count and a
95% interval.

* Table 2 layout (``ruler.csv`` / ``ruler.md`` / ``ruler.tex``): method x length, the mean over RULER tasks
  (x100) with a bootstrap interval stratified by task, the average over lengths and RULER's effective
  length; one block before fine-tuning (training-free) and one after. A task that did not run at a
  length (too short for its prompt, QA data unavailable) is left out of that length's mean, and the
  table says over how many tasks each mean runs.
* Per-task breakdown (``ruler_tasks.csv``), needle heat map (``niah_grid.csv``, ``niah_heatmaps.png``),
  passkey accuracy with Wilson intervals (``passkey.csv``).
* Comparisons on the same samples (paired bootstrap; "no difference" when the interval of the difference
  covers 0): every method against LongRoPE2, and the ablations (needle-PPL vs plain-PPL search, real vs
  theoretical critical dimension, mixed vs long-only fine-tuning) in ``comparisons.csv``.
* Retention (``retention.csv``): RULER mean at L0 of a method over the base model's, on the same samples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from .. import methods, stats
from ..artifacts import StageRun
from ..evaluation import ruler

NAME = "ruler-tables"
HELP = "RULER / heat-map / passkey / retention / ablation tables with 95%% intervals from ruler scores"
CONFIG_KEYS = ("model.geometry.original_length", "extension.target_length", "evaluation.effective_threshold")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("scores", "suites")
STAGES = ("training-free", "after")
#: (ablation, method A, method B, stage): A is the paper's choice, B the alternative it is tested against
ABLATIONS = (
    ("needle-PPL vs plain-PPL search", "longrope2", "longrope2_plain_ppl", "training-free"),
    ("real vs theoretical critical dimension (YaRN)", "yarn_rcd", "yarn", "training-free"),
    ("real vs theoretical critical dimension (NTK)", "ntk_rcd", "ntk", "training-free"),
    ("mixed vs long-only fine-tuning", "longrope2", methods.NO_MIXED, "after"),
)
HEATMAP_COLOURS = ["#F0496E", "#EBB839", "#0CD79F"]  # gkamradt's red -> yellow -> green


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", required=True, nargs="+", metavar="FILE",
                   help="scores.json files of ruler runs (samples.jsonl beside each)")
    p.add_argument("--suites", nargs="*", default=[], metavar="FILE",
                   help="suite.json files of LongBench / MMLU runs (samples.jsonl beside each)")


# ------------------------------------------------------------------------------------------------ loading


def load(paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(per-sample scores, per-(task, length) status rows, device of each run) of every run."""
    samples, cells, devices = [], [], []
    for path in paths:
        path = Path(path)
        scores = json.loads(path.read_text())
        method, stage = scores["method"], scores["stage"]
        for task, by_length in scores["tasks"].items():
            for length, cell in by_length.items():
                cells.append({"method": method, "stage": stage, "task": task, "length": int(length),
                              "n": cell["n"], "not_run": cell["not_run"]})
        with (path.parent / "samples.jsonl").open(encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                samples.append({"method": method, "stage": stage, "task": rec["task"], "length": int(rec["length"]),
                                "index": rec["index"], "depth": rec.get("depth"), "score": float(rec["score"])})
        manifest = path.parent / "manifest.json"
        if manifest.is_file():
            devices.append(machine(json.loads(manifest.read_text()).get("device", {})))
    columns = ["method", "stage", "task", "length", "index", "depth", "score"]
    return pd.DataFrame(samples, columns=columns), pd.DataFrame(cells), sorted(set(devices))


def machine(device: dict) -> str:
    if device.get("gpu"):
        return f"{device['gpu']} x{device.get('gpu_count', 1)}"
    return f"{device.get('cpu', 'CPU')} ({device.get('cpu_count', '?')} cores)"


def order_key(method: str) -> float:
    names = list(methods.REGISTRY)
    if method == methods.NO_MIXED:
        return names.index("longrope2") + 0.5
    return names.index(method) if method in names else len(names)


def runs(df: pd.DataFrame, stage: str) -> list[str]:
    return sorted(df.loc[df["stage"] == stage, "method"].unique(), key=order_key)


# ------------------------------------------------------------------------------------------------ tables


def _ruler_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["task"].isin(list(ruler.TASKS))]


def mean_cell(rows: pd.DataFrame) -> stats.Interval:
    """RULER's task average of these samples: the mean of per-task means, bootstrapped within tasks."""
    return stats.bootstrap_mean(rows["score"].to_numpy(), groups=rows["task"].to_numpy())


def table2(df: pd.DataFrame, cells: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Long form of Table 2: one row per (stage, method, length) plus an 'avg' row per (stage, method)."""
    rr, out = _ruler_rows(df), []
    tasks_total = len(set(cells.loc[cells["task"].isin(list(ruler.TASKS)), "task"]))
    for stage in STAGES:
        for method in runs(rr, stage):
            mine = rr[(rr["stage"] == stage) & (rr["method"] == method)]
            per_length = {}
            for length, rows in mine.groupby("length"):
                cell = mean_cell(rows)
                per_length[length] = cell.estimate
                out.append({"stage": stage, "method": method, "length": str(length), **_cols(cell, 100),
                            "tasks_run": rows["task"].nunique(), "tasks_total": tasks_total})
            if per_length:
                groups = mine["task"] + "@" + mine["length"].astype(str)
                avg = stats.bootstrap_mean(mine["score"].to_numpy(), groups=groups.to_numpy())
                effective = max((L for L, s in per_length.items() if 100 * s >= threshold), default=None)
                out.append({"stage": stage, "method": method, "length": "avg", **_cols(avg, 100),
                            "tasks_run": mine["task"].nunique(), "tasks_total": tasks_total,
                            "effective_length": effective})
    return pd.DataFrame(out)


def _cols(cell: stats.Interval, scale: float = 1.0) -> dict:
    return {"score": scale * cell.estimate, "lo": scale * cell.lo, "hi": scale * cell.hi, "n": cell.n}


def per_task(df: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (stage, method, task, length), rows in df.groupby(["stage", "method", "task", "length"]):
        cell = stats.bootstrap_mean(rows["score"].to_numpy())
        out.append({"stage": stage, "method": method, "task": task, "length": length, **_cols(cell, 100),
                    "not_run": None})
    missing = cells[cells["not_run"].notna()]
    for r in missing.itertuples():
        out.append({"stage": r.stage, "method": r.method, "task": r.task, "length": r.length, "score": None,
                    "lo": None, "hi": None, "n": 0, "not_run": r.not_run})
    return ordered(pd.DataFrame(out))


def _sort_key(col: pd.Series) -> pd.Series:
    if col.name == "method":
        return col.map(order_key)
    if col.name == "stage":
        return col.map(lambda s: STAGES.index(s) if s in STAGES else len(STAGES))
    return col


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Training-free before after, methods in registry order (ablations beside their method)."""
    keys = [k for k in ("stage", "method", "suite", "task", "length") if k in df]
    return df.sort_values(keys, key=_sort_key, kind="stable").reset_index(drop=True) if len(df) else df


def paired(df: pd.DataFrame, a: tuple[str, str], b: tuple[str, str], length: int | None) -> tuple | None:
    """(A's cell, B's cell, A - B) on the RULER samples both scored (at one length, or all lengths)."""
    rr = _ruler_rows(df)
    if length is not None:
        rr = rr[rr["length"] == length]
    key = ["task", "length", "index"]
    left = rr[(rr["method"] == a[0]) & (rr["stage"] == a[1])].set_index(key)["score"]
    right = rr[(rr["method"] == b[0]) & (rr["stage"] == b[1])].set_index(key)["score"]
    joined = pd.concat([left.rename("a"), right.rename("b")], axis=1, join="inner").reset_index()
    if joined.empty:
        return None
    groups = (joined["task"] + "@" + joined["length"].astype(str)).to_numpy()
    ca = stats.bootstrap_mean(joined["a"].to_numpy(), groups=groups)
    cb = stats.bootstrap_mean(joined["b"].to_numpy(), groups=groups)
    return ca, cb, stats.paired_bootstrap_diff(joined["a"].to_numpy(), joined["b"].to_numpy(), groups=groups)


def comparisons(df: pd.DataFrame, lengths: list[int]) -> pd.DataFrame:
    """Ablations, then every method against LongRoPE2 (same stage), at each length and over all lengths."""
    pairs = [(name, a, b, stage) for name, a, b, stage in ABLATIONS]
    for stage in STAGES:
        pairs += [(f"LongRoPE2 vs {m}", "longrope2", m, stage) for m in runs(df, stage)
                  if m != "longrope2" and not any(p[1:] == ("longrope2", m, stage) for p in pairs)]
    out = []
    for name, a, b, stage in pairs:
        for length in [*lengths, None]:
            result = paired(df, (a, stage), (b, stage), length)
            if result is None:
                continue
            ca, cb, diff = result
            out.append({"comparison": name, "stage": stage, "a": a, "b": b, "length": length or "all",
                        "a_score": 100 * ca.estimate, "b_score": 100 * cb.estimate, "diff": 100 * diff.estimate,
                        "diff_lo": 100 * diff.lo, "diff_hi": 100 * diff.hi, "n": diff.n,
                        "verdict": stats.verdict(diff), "ablation": (name, a, b, stage) in ABLATIONS})
    return pd.DataFrame(out)


def retention(df: pd.DataFrame, l0: int) -> pd.DataFrame:
    """RULER mean at L0 of each run over the base model's (method none, no scaling), same samples."""
    rr = _ruler_rows(df)
    rr = rr[rr["length"] == l0]
    base = rr[(rr["method"] == "none") & (rr["stage"] == "training-free")].set_index(["task", "index"])["score"]
    out = []
    if base.empty:
        return pd.DataFrame(out)
    for stage in STAGES:
        for method in runs(rr, stage):
            if (method, stage) == ("none", "training-free"):
                continue
            mine = rr[(rr["method"] == method) & (rr["stage"] == stage)].set_index(["task", "index"])["score"]
            joined = pd.concat([mine.rename("a"), base.rename("b")], axis=1, join="inner").reset_index()
            try:
                ratio = stats.paired_bootstrap_ratio(joined["a"].to_numpy(), joined["b"].to_numpy(),
                                                     groups=joined["task"].to_numpy())
            except ValueError:  # the base model scores 0 at L0: no retention to speak of
                continue
            out.append({"stage": stage, "method": method, "length": l0, "retention": 100 * ratio.estimate,
                        "lo": 100 * ratio.lo, "hi": 100 * ratio.hi, "n": ratio.n})
    return pd.DataFrame(out)


def niah_grid(df: pd.DataFrame) -> pd.DataFrame:
    grid = df[df["task"] == "niah_depth"].copy()
    grid["depth_pct"] = (100 * grid["depth"].astype(float)).round(-1).astype(int)
    out = grid.groupby(["stage", "method", "depth_pct", "length"])["score"].agg(["mean", "size"]).reset_index()
    return out.rename(columns={"mean": "score", "size": "n"})


def passkey(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (stage, method, length), rows in df[df["task"] == "passkey"].groupby(["stage", "method", "length"]):
        cell = stats.wilson(rows["score"].sum(), len(rows))
        out.append({"stage": stage, "method": method, "length": length, **_cols(cell, 100)})
    return ordered(pd.DataFrame(out))


def suite_tables(paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(score per stage x method x suite, retention vs the base model), x100 with 95% intervals. LongBench
    averages its tasks (bootstrap within tasks); MMLU is a micro-average over questions."""
    runs_, samples = [], []
    for path in paths:
        res = json.loads(Path(path).read_text())
        runs_.append(res)
        with (Path(path).parent / "samples.jsonl").open(encoding="utf-8") as f:
            samples += [{**json.loads(line), "method": res["method"], "stage": res["stage"], "suite": res["suite"]}
                        for line in f]
    df = pd.DataFrame(samples, columns=["method", "stage", "suite", "task", "doc_id", "score"])
    scores, kept = [], []
    for (stage, method, suite), rows in df.groupby(["stage", "method", "suite"], sort=False):
        groups = rows["task"].to_numpy() if suite == "longbench" else None
        scores.append({"stage": stage, "method": method, "suite": suite,
                       **_cols(stats.bootstrap_mean(rows["score"].to_numpy(), groups=groups), 100)})
        base = df[(df["method"] == "none") & (df["stage"] == "training-free") & (df["suite"] == suite)]
        if (method, stage) == ("none", "training-free") or base.empty:
            continue
        joined = rows.merge(base, on=["task", "doc_id"], suffixes=("", "_base"))
        try:
            ratio = stats.paired_bootstrap_ratio(joined["score"].to_numpy(), joined["score_base"].to_numpy(),
                                                 groups=joined["task"].to_numpy() if suite == "longbench" else None)
        except ValueError:
            continue
        kept.append({"stage": stage, "method": method, "suite": suite, "retention": 100 * ratio.estimate,
                     "lo": 100 * ratio.lo, "hi": 100 * ratio.hi, "n": ratio.n})
    return ordered(pd.DataFrame(scores)), ordered(pd.DataFrame(kept))


# ------------------------------------------------------------------------------------------------ rendering


def _fmt(score, lo, hi, n, digits: int = 1) -> str:
    if score is None or pd.isna(score):
        return "not run"
    return f"{score:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] (n={int(n)})"


def markdown(t2: pd.DataFrame, tasks: pd.DataFrame, comp: pd.DataFrame, ret: pd.DataFrame, pk: pd.DataFrame,
             devices: list[str], threshold: float, target: int, suite: pd.DataFrame | None = None,
             suite_ret: pd.DataFrame | None = None, all_lengths: list[int] = ()) -> str:
    lines = [f"Measured on: {', '.join(devices) or 'unknown machine'}. Cells: score x100, 95% interval, samples.", ""]
    all_lengths = sorted(all_lengths or {int(L) for L in t2["length"] if L != "avg"})
    for stage in STAGES:
        block = t2[t2["stage"] == stage]
        if block.empty:
            continue
        lengths = [str(L) for L in all_lengths]
        title = "before fine-tuning (training-free)" if stage == "training-free" else "after fine-tuning"
        counts = block[block["length"] != "avg"].groupby("length")["tasks_run"].max().reindex(lengths).fillna(0).astype(int)
        total = int(block["tasks_total"].max())
        lines += [f"**RULER, {title}** (mean over tasks; " + ", ".join(f"{L}: {counts[L]}/{total} tasks" for L in lengths)
                  + f"; effective length: longest length scoring >= {threshold:g})", "",
                  "| method | " + " | ".join(lengths) + " | avg | effective |", "|---" * (len(lengths) + 3) + "|"]
        for method, rows in block.groupby("method", sort=False):
            by = rows.set_index("length")
            eff = by.loc["avg", "effective_length"] if "avg" in by.index else None
            lines.append(f"| {method} | " + " | ".join(_fmt(*by.loc[L, ["score", "lo", "hi", "n"]]) if L in by.index
                                                    else "not run" for L in [*lengths, "avg"])
                         + f" | {'-' if eff is None or pd.isna(eff) else int(eff)} |")
        lines.append("")
    at_target = tasks[(tasks["length"] == target)]
    if not at_target.empty:
        names = [t for t in ruler.TASKS if t in set(at_target["task"])]
        lines += [f"**Per task at {target}** (score x100 [95% interval] (n), or not run)", "",
                  "| stage | method | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
        for (stage, method), rows in at_target.groupby(["stage", "method"], sort=False):
            by = rows.set_index("task")
            lines.append(f"| {stage} | {method} | " + " | ".join(
                _fmt(*by.loc[t, ["score", "lo", "hi", "n"]]) if t in by.index else "-" for t in names) + " |")
        reasons = tasks[tasks["not_run"].notna()].drop_duplicates(["task", "length"])
        lines += [""] + [f"- not run: {r.task} at {r.length}: {r.not_run}" for r in reasons.itertuples()]
        lines.append("")
    if not comp.empty:
        lines += ["**Comparisons on the same samples** (A - B, x100, paired bootstrap)", "",
                  "| comparison | stage | length | A | B | A - B [95%] | n | verdict |", "|---" * 8 + "|"]
        for r in comp.itertuples():
            lines.append(f"| {r.comparison} | {r.stage} | {r.length} | {r.a_score:.1f} | {r.b_score:.1f} | "
                         f"{r.diff:+.1f} [{r.diff_lo:+.1f}, {r.diff_hi:+.1f}] | {r.n} | {r.verdict} |")
        lines.append("")
    if not ret.empty:
        lines += ["**Short-context retention** (RULER mean at L0 over the base model's, %)", "",
                  "| stage | method | retention [95%] (n) |", "|---|---|---|"]
        lines += [f"| {r.stage} | {r.method} | {_fmt(r.retention, r.lo, r.hi, r.n)} |" for r in ret.itertuples()]
        lines.append("")
    if suite is not None and not suite.empty:
        kept = suite_ret.set_index(["stage", "method", "suite"]) if suite_ret is not None and not suite_ret.empty else None
        lines += ["**LongBench / MMLU** (x100 [95% interval] (n); retention = score / base model's, %)", "",
                  "| stage | method | suite | score | retention |", "|---|---|---|---|---|"]
        for r in suite.itertuples():
            k = kept.loc[(r.stage, r.method, r.suite)] if kept is not None and (r.stage, r.method, r.suite) in kept.index else None
            lines.append(f"| {r.stage} | {r.method} | {r.suite} | {_fmt(r.score, r.lo, r.hi, r.n)} | "
                         + ("-" if k is None else _fmt(k["retention"], k["lo"], k["hi"], k["n"])) + " |")
        lines.append("")
    if not pk.empty:
        lengths = sorted(pk["length"].unique())
        lines += ["**Passkey accuracy** (%, Wilson 95% interval)", "",
                  "| stage | method | " + " | ".join(map(str, lengths)) + " |", "|---" * (len(lengths) + 2) + "|"]
        for (stage, method), rows in pk.groupby(["stage", "method"], sort=False):
            by = rows.set_index("length")
            lines.append(f"| {stage} | {method} | " + " | ".join(
                _fmt(*by.loc[L, ["score", "lo", "hi", "n"]]) if L in by.index else "-" for L in lengths) + " |")
        lines.append("")
    return "\n".join(lines)


def latex(t2: pd.DataFrame) -> str:
    """Table 2 as a LaTeX tabular (booktabs): score with its interval half-width."""
    out = []
    for stage in STAGES:
        block = t2[t2["stage"] == stage]
        if block.empty:
            continue
        cols = list(dict.fromkeys(block["length"]))
        out += [f"% RULER, {stage}", "\\begin{tabular}{l" + "c" * len(cols) + "}", "\\toprule",
                "Method & " + " & ".join(cols) + " \\\\", "\\midrule"]
        for method, rows in block.groupby("method", sort=False):
            by = rows.set_index("length")
            out.append(method.replace("_", "\\_") + " & " + " & ".join(
                f"{by.loc[c, 'score']:.1f}$\\pm${(by.loc[c, 'hi'] - by.loc[c, 'lo']) / 2:.1f}" if c in by.index else "--"
                for c in cols) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def plot_lengths(t2: pd.DataFrame, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, stage in zip(axes, STAGES):
        block = t2[(t2["stage"] == stage) & (t2["length"] != "avg")]
        for method, rows in block.groupby("method", sort=False):
            x = rows["length"].astype(int)
            ax.errorbar(x, rows["score"], yerr=[rows["score"] - rows["lo"], rows["hi"] - rows["score"]], fmt="o-",
                        capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_title("training-free" if stage == "training-free" else "after fine-tuning")
        ax.set_xlabel("context length (tokens)")
        if len(block):
            ax.legend(fontsize=7)
    axes[0].set_ylabel("RULER mean over tasks (x100, 95% interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_heatmaps(grid: pd.DataFrame, path) -> None:
    """Depth x length per run, red -> yellow -> green, depth 0% at the top (gkamradt's convention)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    panels = list(grid.groupby(["stage", "method"], sort=False)) or [(("-", "no heat-map data"), grid)]
    cols = min(4, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 3.0 * rows_n), squeeze=False)
    cmap = LinearSegmentedColormap.from_list("needle", HEATMAP_COLOURS)
    image = None
    for ax, ((stage, method), g) in zip(axes.flat, panels):
        if g.empty:
            ax.set_axis_off()
            continue
        table = g.pivot_table(index="depth_pct", columns="length", values="score", aggfunc="mean").sort_index()
        image = ax.imshow(table.to_numpy(), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")  # row 0 (depth 0%) on top
        ax.set_xticks(range(len(table.columns)), [str(c) for c in table.columns], fontsize=7)
        ax.set_yticks(range(len(table.index)), [f"{d}%" for d in table.index], fontsize=7)
        ax.set_title(f"{method} ({stage})", fontsize=8)
        ax.set_xlabel("Token Limit", fontsize=7)
        ax.set_ylabel("Depth Percent", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="needle found (share)")
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    df, cells, devices = load(args.scores)
    l0, target = cfg["model"]["geometry"]["original_length"], cfg["extension"]["target_length"]
    threshold = cfg["evaluation"]["effective_threshold"]
    lengths = sorted(df["length"].unique().tolist())
    t2 = table2(df, cells, threshold)
    tasks = per_task(df, cells)
    comp = comparisons(df, lengths)
    ret = retention(df, l0)
    grid, pk = niah_grid(df), passkey(df)
    suite, suite_ret = suite_tables(args.suites)
    text = markdown(t2, tasks, comp, ret, pk, devices, threshold, target, suite, suite_ret,
                    sorted(cells["length"].unique().tolist()))
    with StageRun("ruler-tables", out, cfg, inputs=[*args.scores, *args.suites]) as run_:
        t2.to_csv(run_.path("ruler.csv"), index=False, float_format="%.4f")
        run_.write_text("ruler.md", text)
        run_.write_text("ruler.tex", latex(t2))
        tasks.to_csv(run_.path("ruler_tasks.csv"), index=False, float_format="%.4f")
        comp.to_csv(run_.path("comparisons.csv"), index=False, float_format="%.4f")
        ret.to_csv(run_.path("retention.csv"), index=False, float_format="%.4f")
        grid.to_csv(run_.path("niah_grid.csv"), index=False, float_format="%.4f")
        pk.to_csv(run_.path("passkey.csv"), index=False, float_format="%.4f")
        # written even without suites (the scale model has none): a declared output, with its header
        suite.reindex(columns=["stage", "method", "suite", "score", "lo", "hi", "n"]).to_csv(
            run_.path("suites.csv"), index=False, float_format="%.4f")
        suite_ret.reindex(columns=["stage", "method", "suite", "retention", "lo", "hi", "n"]).to_csv(
            run_.path("suites_retention.csv"), index=False, float_format="%.4f")
        plot_lengths(t2, run_.path("ruler_vs_length.png"))
        plot_heatmaps(grid, run_.path("niah_heatmaps.png"))
    print(text)
