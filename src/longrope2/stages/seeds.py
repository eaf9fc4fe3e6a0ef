"""Replicates: the same tables from several seeds' runs, as the mean and a 95% interval across seeds.

Each seed of ``experiment.seeds`` runs the whole DAG (pretraining, search, fine-tuning, evaluation) as
experiment ``<name>-seed<S>``. Within one run a cell's interval covers its evaluation samples; across
seeds the interval here covers what a rerun from another seed would give (Student's t on the per-seed
values, n - 1 degrees of freedom). A comparison "holds" when its per-seed differences' interval
excludes 0, else it is "no difference".
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import StageRun

NAME = "seeds"
HELP = "mean and 95%% interval across seeds of each replicate's tables"
CONFIG_KEYS = ("experiment.seeds",)
INPUTS = ()

#: two-sided 95% Student-t quantiles by degrees of freedom (1..30); beyond, the normal 1.96
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

#: table (path under a run's results folder) -> (key columns, value columns)
TABLES = {
    "ruler": ("tables/ruler/ruler.csv", ["stage", "method", "length"], ["score"]),
    "ruler_tasks": ("tables/ruler/ruler_tasks.csv", ["stage", "method", "task", "length"], ["score"]),
    "retention": ("tables/ruler/retention.csv", ["stage", "method", "length"], ["retention"]),
    "comparisons": ("tables/ruler/comparisons.csv", ["comparison", "stage", "a", "b", "length"], ["diff"]),
    "training_free": ("tables/training_free/training_free.csv", ["method", "length"], ["needle_acc", "needle_ppl", "ppl"]),
    "finetune": ("tables/finetune/finetune_comparison.csv", ["method", "stage", "length"],
                 ["needle_acc", "needle_ppl", "ppl"]),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, metavar="DIR", help="results/<name>-seed<S> of each seed")


def t95(n: int) -> float:
    return T95[n - 2] if 2 <= n <= len(T95) + 1 else 1.96


def across(values: np.ndarray) -> dict:
    """Mean and 95% t-interval of per-seed values (no interval from one seed)."""
    v = values[np.isfinite(values)]
    n = len(v)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "seeds": 0}
    mean = float(v.mean())
    half = t95(n) * float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "seeds": n}


#: columns of a summary besides its keys
SUMMARY = ["metric", "mean", "lo", "hi", "seeds", "per_seed"]


def no_summary(keys: list[str]) -> pd.DataFrame:
    """The header alone: a table some replicate did not make."""
    return pd.DataFrame(columns=[*keys, *SUMMARY])


def summarise(frames: list[pd.DataFrame], keys: list[str], values: list[str]) -> pd.DataFrame:
    """One row per key and value column: the mean, interval and per-seed values across the runs."""
    rows = []
    stacked = pd.concat([f.assign(_seed=i) for i, f in enumerate(frames)], ignore_index=True)
    stacked["length"] = stacked["length"].astype(str)
    for key, g in stacked.groupby(keys, sort=False):
        for col in values:
            per_seed = pd.to_numeric(g.set_index("_seed")[col], errors="coerce").reindex(range(len(frames)))
            rows.append({**dict(zip(keys, key)), "metric": col, **across(per_seed.to_numpy(dtype=float)),
                         "per_seed": " ".join("nan" if math.isnan(x) else f"{x:.6g}" for x in per_seed)})
    return pd.DataFrame(rows)


def verdicts(df: pd.DataFrame, above: str = "holds", below: str = "reversed", metric: str | None = None) -> pd.DataFrame:
    """Comparisons: ``above`` (a better) / ``below`` (b better) when the seeds' interval lies above / below 0;
    with ``metric``, only that metric's rows get a verdict (the others "-")."""
    def one(r):
        if metric is not None and r["metric"] != metric:
            return "-"
        if r["seeds"] < 2 or math.isnan(r["lo"]):
            return "one seed"
        return above if r["lo"] > 0 else below if r["hi"] < 0 else "no difference"

    return df.assign(verdict=df.apply(one, axis=1)) if len(df) else df


def d_rcd(runs: list[Path]) -> pd.DataFrame:
    rows = []
    for i, run in enumerate(runs):
        for f in sorted((run / "search").glob("*/factors.json")):
            d = json.loads(f.read_text())
            if d.get("d_rcd") is not None:
                rows.append({"method": f.parent.name, "length": "-", "d_rcd": float(d["d_rcd"]), "_seed": i})
    if not rows:
        return no_summary(["method", "length"])
    return summarise([pd.DataFrame([r for r in rows if r["_seed"] == i]).drop(columns="_seed") for i in range(len(runs))],
                     ["method", "length"], ["d_rcd"])


def base_retrieval(runs: list[Path]) -> pd.DataFrame:
    """The base model's retrieval check (``base_model/retrieval/retrieval.json``: single and four-needle
    accuracy per length) across seeds: whether every seed's pretraining gives a base that retrieves."""
    frames = []
    for run in runs:
        f = run / "base_model" / "retrieval" / "retrieval.json"
        if not f.is_file():
            return no_summary(["task", "length"])
        lengths = json.loads(f.read_text())["lengths"]
        frames.append(pd.DataFrame([{"task": task, "length": L, "accuracy": acc}
                                    for L, tasks in lengths.items() for task, acc in tasks.items()]))
    return summarise(frames, ["task", "length"], ["accuracy"])


def overfit_rows(factors: dict) -> list[dict]:
    """One search's over-fitting check (``best_on_heldout``) in nats: its best candidate's ln PPL (needle-PPL,
    or plain PPL for a plain-PPL search) on the search and held-out sets, and for each fixed reference method
    the paired best - reference on each set. ``heldout_minus_search`` > 0: the best lost on fresh samples
    what it had won on its own."""
    b = factors.get("best_on_heldout")
    if not b:
        return []
    s, h = math.log(b["search_set"]["ppl"]["estimate"]), math.log(b["heldout"]["ppl"]["estimate"])
    rows = [{"reference": "-", "search": s, "heldout": h, "heldout_minus_search": h - s, "agree": float(b["agree"])}]
    for ref, r in b.get("references", {}).items():
        s, h = (r["best_minus_reference"][k]["estimate"] for k in ("search_set", "heldout"))
        rows.append({"reference": ref, "search": s, "heldout": h, "heldout_minus_search": h - s,
                     "agree": float(r["agree"])})
    return rows


OVERFIT_KEYS = ["method", "reference", "length"]
OVERFIT_VALUES = ["search", "heldout", "heldout_minus_search", "agree"]


def overfit(runs: list[Path]) -> pd.DataFrame:
    """Each search's over-fitting check across seeds. Reference "-" is the literal check (ln PPL of the best
    candidate; ``agree``: the share of seeds whose two intervals overlap); a reference method gives the paired
    one, which a held-out split that is harder for every method leaves unchanged. Verdict on
    ``heldout_minus_search``: "over-fits" when its interval across seeds lies above 0."""
    frames = []
    for run in runs:
        rows = [{"method": f.parent.name, "length": "-", **r}
                for f in sorted((run / "search").glob("*/factors.json")) for r in overfit_rows(json.loads(f.read_text()))]
        frames.append(pd.DataFrame(rows, columns=OVERFIT_KEYS + OVERFIT_VALUES))
    if all(f.empty for f in frames):
        return no_summary(OVERFIT_KEYS).assign(verdict=[])
    df = summarise(frames, OVERFIT_KEYS, OVERFIT_VALUES)
    share = df["metric"] == "agree"  # a share of seeds: no t-interval
    df.loc[share, ["lo", "hi"]] = math.nan
    return verdicts(df, above="over-fits", below="held-out better", metric="heldout_minus_search")


#: the needle tables LongRoPE2 is compared in, method against method within one run: training-free (finding
#: (d): the plain-PPL search ablation; the baselines) and after fine-tuning (finding (b); the long-only ablation)
NEEDLE_TABLES = ("training_free", "finetune")


def needle_differences(table: pd.DataFrame) -> pd.DataFrame:
    """One run's paired differences, LongRoPE2 (a) minus every other method (b) of the same stage and length:
    ``needle_acc`` a - b, and ``needle_ppl`` as ln(b / a). Both are positive where LongRoPE2 is better, so a
    comparison "holds" the same way as RULER's; PPL differences go on the log scale because a seed whose
    base does not retrieve has needle-PPLs several times the others' and would otherwise set the spread."""
    t = table.assign(stage=table["stage"] if "stage" in table else "-")
    rows = []
    for (stage, length), g in t.groupby(["stage", "length"], sort=False):
        g = g.set_index("method")
        if "longrope2" not in g.index:
            continue
        a = g.loc["longrope2"]
        for b, r in g.drop(index="longrope2").iterrows():
            rows.append({"stage": stage, "a": "longrope2", "b": b, "length": length,
                         "needle_acc": a["needle_acc"] - r["needle_acc"],
                         "needle_ppl": math.log(r["needle_ppl"] / a["needle_ppl"])
                         if 0 < a["needle_ppl"] < math.inf and 0 < r["needle_ppl"] < math.inf else math.nan})
    return pd.DataFrame(rows, columns=["stage", "a", "b", "length", "needle_acc", "needle_ppl"])


def needle_comparisons(runs: list[Path]) -> pd.DataFrame:
    """Across seeds, each needle-table comparison's per-seed differences with their verdict."""
    keys = ["table", "stage", "a", "b", "length"]
    frames = [[] for _ in runs]
    for name in NEEDLE_TABLES:
        rel = TABLES[name][0]
        if not all((r / rel).is_file() for r in runs):
            continue
        for i, r in enumerate(runs):
            frames[i].append(needle_differences(pd.read_csv(r / rel)).assign(table=name))
    if not frames[0]:
        return no_summary(keys)
    return verdicts(summarise([pd.concat(f, ignore_index=True) for f in frames], keys, ["needle_acc", "needle_ppl"]))


def markdown(name: str, df: pd.DataFrame) -> str:
    df = df[df["seeds"] > 0]  # cells no seed ran (a task too long for a length) stay in the CSV only
    if df.empty:
        return ""
    keys = [c for c in df.columns if c not in (*SUMMARY[1:], "verdict")]
    head = keys + ["mean [95% interval across seeds]", "seeds"] + (["verdict"] if "verdict" in df else [])
    out = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in df.iterrows():
        cell = f"{r['mean']:.4g}" + (f" [{r['lo']:.4g}, {r['hi']:.4g}]" if not math.isnan(r["lo"]) else "")
        out.append("| " + " | ".join(str(r[k]) for k in keys) + f" | {cell} | {r['seeds']} |"
                   + (f" {r['verdict']} |" if "verdict" in df else ""))
    return "\n".join(out + [""])


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    runs = [Path(r) for r in args.runs]
    rels = [rel for rel, _, _ in TABLES.values()] + ["base_model/retrieval/retrieval.json"]
    inputs = [r / rel for r in runs for rel in rels if (r / rel).is_file()]
    inputs += [f for r in runs for f in sorted((r / "search").glob("*/factors.json"))]
    with StageRun("seeds", out, cfg, inputs=inputs, seed=None) as run_:
        md = [f"# Across {len(runs)} seeds ({', '.join(r.name for r in runs)})", ""]
        base = base_retrieval(runs)
        base.to_csv(run_.path("base_retrieval.csv"), index=False, float_format="%.6g")
        md.append(markdown("base model retrieval check", base))
        for name, (rel, keys, values) in TABLES.items():
            frames = [pd.read_csv(r / rel) for r in runs if (r / rel).is_file()]
            if len(frames) != len(runs):  # a table this experiment does not make
                df = no_summary(keys)
            else:
                df = summarise(frames, keys, values)
                df = verdicts(df) if name == "comparisons" else df
            df.to_csv(run_.path(f"{name}.csv"), index=False, float_format="%.6g")
            md.append(markdown(name, df))
        needles = needle_comparisons(runs)
        needles.to_csv(run_.path("needle_comparisons.csv"), index=False, float_format="%.6g")
        md.append(markdown("needle comparisons (LongRoPE2 minus b: accuracy; needle-PPL as ln(b / a))", needles))
        dr = d_rcd(runs)
        dr.to_csv(run_.path("d_rcd.csv"), index=False, float_format="%.6g")
        md.append(markdown("searched d_rcd", dr))
        fit = overfit(runs)
        fit.to_csv(run_.path("overfit.csv"), index=False, float_format="%.6g")
        md.append(markdown("search over-fitting check (nats: ln PPL of the best candidate on the search's own "
                           "fitness, or best minus reference paired per sample; agree: share of seeds whose "
                           "intervals overlap)", fit))
        run_.write_text("seeds.md", "\n".join(md))
    print("\n".join(md))
