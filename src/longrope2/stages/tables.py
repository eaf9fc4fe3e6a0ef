"""Paper tables: collect per-run ``metrics.json`` files into a CSV, a Markdown table and a plot.

Rows follow the method registry's order; an overflowing PPL (``"inf"`` in the metrics) shows as ∞. Each
cell carries its 95% interval where the metrics have one (``<metric>_lo`` / ``_hi``: Wilson for accuracy,
bootstrap over samples for PPL), and the CSV its sample counts: ``n`` needle samples, ``n_ppl`` plain-text rows."""

from __future__ import annotations

import argparse
import json

import math

import pandas as pd

from .. import methods
from ..artifacts import StageRun

NAME = "tables"
HELP = "collect metrics.json files into <name>.csv / .md / .png"
CONFIG_KEYS = ()
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", nargs="+", required=True, metavar="FILE", help="metrics.json files of evaluate runs")
    p.add_argument("--name", required=True, help="table name, e.g. training_free or finetune_comparison")
    p.add_argument("--as-before", nargs="*", default=[], metavar="FILE[:METHOD]",
                   help="metrics files to list as stage 'before' (optionally under another method name)")
    p.add_argument("--columns", nargs="+", default=["method", "length", "needle_acc", "needle_ppl", "ppl"],
                   help="CSV columns (from method, stage, length, needle_acc, needle_ppl, ppl)")


def collect(paths: list[str], as_before: list[str] = ()) -> pd.DataFrame:
    rows = []
    entries = [(p, None, None) for p in paths] + [(*(e.split(":", 1) if ":" in e else (e, None)), "before") for e in as_before]
    for path, method, stage in entries:
        m = json.loads(open(path).read())
        for L, metrics in m["lengths"].items():
            values = {k: float(v) for k, v in metrics.items()}  # "inf" -> inf
            rows.append({"method": method or m["method"], "stage": stage or m.get("stage", ""), "length": int(L),
                         "n": m.get("samples"), "n_ppl": m.get("ppl_samples", m.get("samples")), **values})
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """One block per metric: methods as rows, lengths as columns (the paper's layout)."""
    keys = [c for c in ("method", "stage") if c in df and df[c].nunique() > 1] or ["method"]
    out = []
    for metric, fmt in (("needle_acc", "{:.2f}"), ("needle_ppl", "{:.3g}"), ("ppl", "{:.3g}")):
        if metric not in df:
            continue
        wide = df.pivot_table(index=keys, columns="length", values=metric, sort=False)
        bands = [f"{metric}_lo", f"{metric}_hi"]
        lo, hi = ((df.pivot_table(index=keys, columns="length", values=b, sort=False) for b in bands)
                  if all(b in df and df[b].notna().all() for b in bands) else (None, None))
        count = "n_ppl" if metric == "ppl" and "n_ppl" in df else "n"  # plain-PPL rows have their own count
        n = df[count].dropna().unique() if count in df else []
        title = f"**{metric}**" + (f" (n = {int(n[0])} per cell, 95% interval)" if len(n) == 1 and lo is not None else "")
        header = "| " + " | ".join(keys) + " | " + " | ".join(str(c) for c in wide.columns) + " |"
        out += [title, "", header, "|" + "---|" * (len(keys) + len(wide.columns))]
        for idx, row in wide.iterrows():
            cells = [_cell(fmt, v) + ("" if lo is None else f" [{_cell(fmt, lo.loc[idx, c])}, {_cell(fmt, hi.loc[idx, c])}]")
                     for c, v in row.items()]
            idx = idx if isinstance(idx, tuple) else (idx,)
            out.append("| " + " | ".join(map(str, idx)) + " | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _cell(fmt: str, v: float) -> str:
    return "∞" if math.isinf(v) else fmt.format(v)


def order(df: pd.DataFrame) -> pd.DataFrame:
    """Registry order of methods (fine-tuning ablations right after their method), 'before' above 'after'."""
    names = list(methods.REGISTRY)
    rank = {n: i for i, n in enumerate(names)} | {methods.NO_MIXED: names.index("longrope2") + 0.5}
    return df.assign(_m=df["method"].map(lambda m: rank.get(m, len(names))), _s=df["stage"] != "before") \
        .sort_values(["_m", "_s", "length"], kind="stable").drop(columns=["_m", "_s"])


def plot(df: pd.DataFrame, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    keys = ["method", "stage"] if "stage" in df and df["stage"].nunique() > 1 else ["method"]
    for key, g in df.groupby(keys, sort=False):
        label = " / ".join(key) if isinstance(key, tuple) else key
        g = g.sort_values("length")
        axes[0].plot(g["length"], g["needle_acc"], "o-", label=label)
        axes[1].plot(g["length"], g["needle_ppl"], "o-", label=label)
    for ax, name in zip(axes, ("needle accuracy", "needle-PPL")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(name)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    df = collect(args.metrics, args.as_before)
    chosen = [c for c in args.columns if c in df]
    # each chosen metric's interval bounds, and the sample counts (needles; plain-PPL rows), after the chosen columns
    counts = ["n"] + (["n_ppl"] if "ppl" in chosen else [])
    cols = chosen + [c for m in chosen for c in (f"{m}_lo", f"{m}_hi") if c in df] + [c for c in counts if c in df]
    df = order(df[cols + [c for c in df.columns if c not in cols]])
    with StageRun("tables", out, {"name": args.name, "columns": cols}, inputs=args.metrics + [e.split(":")[0] for e in args.as_before], seed=None) as run_:
        df[cols].to_csv(run_.path(f"{args.name}.csv"), index=False, float_format="%.6g")
        run_.write_text(f"{args.name}.md", markdown(df))
        plot(df, run_.path(f"{args.name}.png"))
    print(markdown(df))
