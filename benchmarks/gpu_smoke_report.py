"""Per-stage wall time, peak GPU memory, tokens/s and MFU of one DAG run, from what the run itself wrote:
each stage's manifest.json (``wall_time_s`` and ``work``: tokens, FLOPs actually computed, peak GPU memory;
see longrope2.workload) and Snakemake's benchmark files (benchmarks/runs/<experiment>/*.tsv).

    python benchmarks/gpu_smoke_report.py --experiment smollm2-32k-smoke --out gpu_smoke.json

MFU = FLOPs actually computed / (stage wall time x peak): causal attention counts half the square, the
other documents' blocks of a packed fine-tuning row nothing, the LM head only the rows it was applied to,
a backward twice its forward, activation recomputation nothing. The stage's whole wall time (process
start, loading, data) is the denominator, so it is a lower bound on the kernels' utilisation;
``mfu_compute_window`` divides by first-forward-to-last-forward instead. With --gpu-jobs > 1 stages
shared the GPU and each one's MFU understates what it would reach alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from pathlib import Path


def stage_rows(roots: list[Path], peak_flops: float) -> list[dict]:
    rows = []
    for root in roots:
        for man_path in sorted(root.rglob("manifest.json")):
            if ".checkpoints" in man_path.parts:
                continue
            man = json.loads(man_path.read_text())
            work = man.get("work") or {}
            wall = float(man.get("wall_time_s") or 0.0)
            row = {"folder": str(man_path.parent), "stage": man.get("stage"), "wall_s": wall,
                   "device": (man.get("device") or {}).get("gpu") or (man.get("device") or {}).get("device"),
                   "peak_gpu_mib": work.get("peak_gpu_mib"), "tokens": work.get("tokens"),
                   "trained_tokens": work.get("trained_tokens"), "flops": work.get("flops"),
                   "attention_flops": work.get("attention_flops"), "compute_window_s": work.get("compute_window_s")}
            if work.get("tokens") and wall > 0:
                row["tokens_per_s"] = round(work["tokens"] / wall, 1)
                row["mfu"] = round(work["flops"] / (wall * peak_flops), 5)
                if work.get("compute_window_s"):
                    row["mfu_compute_window"] = round(work["flops"] / (work["compute_window_s"] * peak_flops), 5)
            rows.append(row)
    return rows


def benchmark_tsvs(folder: Path) -> dict[str, dict]:
    out = {}
    for tsv in sorted(folder.glob("*.tsv")):
        with open(tsv) as f:
            recs = list(csv.DictReader(f, delimiter="\t"))
        if recs:
            r = recs[-1]
            out[tsv.stem] = {"s": float(r["s"]), "max_rss_mb": _num(r.get("max_rss")), "cpu_time_s": _num(r.get("cpu_time"))}
    return out


def _num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200 SXM 989)")
    ap.add_argument("--gpu-jobs", type=int, default=1, help="GPU jobs that shared the GPU at a time")
    ap.add_argument("--snakemake-rc", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    exp = args.experiment
    stages = stage_rows([Path("resources") / exp, Path("results") / exp], args.peak_tflops * 1e12)
    tsv = benchmark_tsvs(Path("benchmarks") / "runs" / exp)
    on_gpu = [r for r in stages if r.get("peak_gpu_mib") is not None]
    total_flops = sum(r["flops"] or 0 for r in stages)
    report = {
        "experiment": exp,
        "measured_on_gpu": bool(on_gpu),
        "gpu": next((r["device"] for r in on_gpu), None),
        "host": platform.node(),
        "peak_tflops": args.peak_tflops,
        "gpu_jobs_at_a_time": args.gpu_jobs,
        "snakemake_rc": args.snakemake_rc,
        "dag_wall_s_sum_of_jobs": round(sum(v["s"] for v in tsv.values()), 1),
        "flops_total": total_flops,
        "peak_gpu_mib_max": max((r["peak_gpu_mib"] for r in on_gpu), default=None),
        "stages": stages,
        "snakemake_benchmarks": tsv,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for r in stages:
        if r.get("tokens"):
            print(f"{r['folder']:70s} {r['wall_s']:7.1f}s {r.get('tokens_per_s', 0):>11.0f} tok/s "
                  f"MFU {100 * r.get('mfu', 0):5.2f}%  peak {r['peak_gpu_mib']} MiB")
    print(f"-> {args.out} ({len(stages)} stages, measured on GPU: {bool(on_gpu)})")


if __name__ == "__main__":
    main()
