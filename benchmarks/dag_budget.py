"""The time and memory budget of one completed DAG run, from what the run left behind (JSON out).

    python benchmarks/dag_budget.py --experiment scale --out benchmarks/dag_budget.json

Every stage's manifest records when it finished and how long it ran (``finished_at``, ``wall_time_s``), so
a job started at finished - wall: the DAG's wall time is the last finish minus the first start over the
experiment's manifests (pretraining included; a stage copied in or rerun by hand counts as its manifest
says). Snakemake's ``benchmark:`` files (``benchmarks/runs/<experiment>/<job>.tsv``) give each job's peak
RSS. Per stage: jobs, summed and longest job seconds, peak RSS. A manifest written by hand outside
Snakemake has no benchmark row: its RSS is missing, not zero.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

from longrope2.artifacts import cpu_model


def finished(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")


def peak_rss(bench_dir: Path) -> dict[str, float]:
    """max_rss (MB) of every benchmark file, by job name (the file's stem)."""
    out = {}
    for tsv in sorted(bench_dir.glob("*.tsv")):
        with tsv.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows and rows[-1].get("max_rss") not in (None, "", "NA", "-"):
            out[tsv.stem] = float(rows[-1]["max_rss"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="scale")
    ap.add_argument("--results", default="results", help="folder holding results/<experiment>/")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    root = Path(args.results) / args.experiment
    jobs = []
    for m in sorted(root.glob("**/manifest.json")):
        if ".checkpoints" in m.parts:
            continue
        d = json.loads(m.read_text())
        end = finished(d["finished_at"])
        jobs.append({"stage": d["stage"], "folder": str(m.parent.relative_to(root)), "wall_s": d["wall_time_s"],
                     "start": end - timedelta(seconds=d["wall_time_s"]), "end": end, "device": d.get("device", {})})
    if not jobs:
        raise SystemExit(f"no manifests under {root}: run the DAG first")
    rss = peak_rss(Path("benchmarks") / "runs" / args.experiment)
    stages: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "sum_s": 0.0, "max_s": 0.0})
    for j in jobs:
        s = stages[j["stage"]]
        s["jobs"] += 1
        s["sum_s"] = round(s["sum_s"] + j["wall_s"], 1)
        s["max_s"] = round(max(s["max_s"], j["wall_s"]), 1)
    start, end = min(j["start"] for j in jobs), max(j["end"] for j in jobs)
    result = {
        "experiment": args.experiment,
        "machine": {"cpu": cpu_model(), "platform": platform.platform(),
                    "threads_seen": sorted({j["device"].get("torch_threads") for j in jobs if j["device"].get("torch_threads")})},
        "jobs": len(jobs),
        "wall_min": round((end - start).total_seconds() / 60, 1),
        "job_time_min": round(sum(j["wall_s"] for j in jobs) / 60, 1),
        "first_start": start.isoformat() + "Z", "last_finish": end.isoformat() + "Z",
        "peak_rss_mb": max(rss.values()) if rss else None,
        "peak_rss_job": max(rss, key=rss.get) if rss else None,
        "stages": dict(sorted(stages.items(), key=lambda kv: -kv[1]["sum_s"])),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("jobs", "wall_min", "job_time_min", "peak_rss_mb", "peak_rss_job")}))


if __name__ == "__main__":
    main()
