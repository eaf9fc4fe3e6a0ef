"""The time and memory budget of one completed DAG run, from what the run left behind (JSON out).

    python benchmarks/dag_budget.py --experiment scale --log .snakemake/log/<run>.snakemake.log \
        --out benchmarks/dag_budget.json

A run of several experiments (the `paper` experiment's seeds) takes them all:
``--experiment paper-seed1234 paper-seed2345 paper-seed3456 paper``.

Every stage's manifest records when it finished and how long it ran (``finished_at``, ``wall_time_s``), so
a job started at finished - wall. With ``--log`` (the Snakemake log of the run) only the jobs that
finished while that run was going count, and its own elapsed time is reported beside the span of its jobs:
a table rebuilt by hand afterwards does not stretch the run. Without it every manifest of the experiment
counts, whenever it was written. Snakemake's ``benchmark:`` files (``benchmarks/runs/<experiment>/<job>.tsv``) give each job's peak
RSS (with ``--log``, those written during the run). Per stage: jobs, summed and longest job seconds, peak RSS. A manifest written by hand outside
Snakemake has no benchmark row: its RSS is missing, not zero.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from longrope2.artifacts import cpu_model


def finished(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")


def run_window(log: Path) -> tuple[datetime, datetime, float | None]:
    """(start, end, Snakemake's elapsed seconds) of one run, from its log's ``Date:`` line, last ``[...]``
    timestamp and ``Elapsed time:`` line."""
    text = log.read_text()
    start = datetime.strptime(re.search(r"^\s*Date: (.+)$", text, re.M).group(1).strip(), "%Y-%m-%d %H:%M:%S")
    stamps = re.findall(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", text, re.M)
    end = datetime.strptime(" ".join(stamps[-1].split()), "%a %b %d %H:%M:%S %Y") if stamps else datetime.max
    elapsed = re.search(r"^Elapsed time: (\d+):(\d+):([\d.]+)$", text, re.M)
    seconds = None if elapsed is None else 3600 * int(elapsed[1]) + 60 * int(elapsed[2]) + float(elapsed[3])
    return start, end + timedelta(seconds=1), seconds


def peak_rss(bench_dir: Path, window: tuple[datetime, datetime] | None = None) -> dict[str, float]:
    """max_rss (MB) of every benchmark file, by job name (the file's stem); with ``window`` (UTC) only the
    files written in it: a job the run did not execute keeps an earlier run's file."""
    out = {}
    for tsv in sorted(bench_dir.glob("*.tsv")):
        if window and not window[0] <= datetime.fromtimestamp(tsv.stat().st_mtime, timezone.utc).replace(tzinfo=None) <= window[1]:
            continue
        with tsv.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows and rows[-1].get("max_rss") not in (None, "", "NA", "-"):
            out[tsv.stem] = float(rows[-1]["max_rss"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", nargs="+", default=["scale"], help="one or more results/<experiment>/")
    ap.add_argument("--results", default="results", help="folder holding results/<experiment>/")
    ap.add_argument("--log", type=Path, help="the run's Snakemake log (.snakemake/log/*.snakemake.log)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    roots = [Path(args.results) / e for e in args.experiment]
    jobs = []
    for m in sorted(m for root in roots for m in root.glob("**/manifest.json")):
        if ".checkpoints" in m.parts:
            continue
        d = json.loads(m.read_text())
        end = finished(d["finished_at"])
        jobs.append({"stage": d["stage"], "wall_s": d["wall_time_s"],
                     "start": end - timedelta(seconds=d["wall_time_s"]), "end": end, "device": d.get("device", {})})
    elapsed, window = None, None
    if args.log:
        # the log's stamps are local time, the manifests' UTC: the machine's offset converts them
        lo, hi, elapsed = run_window(args.log)
        offset = datetime.now().astimezone().utcoffset()
        lo, hi = lo - offset - timedelta(seconds=1), hi - offset
        jobs = [j for j in jobs if lo <= j["end"] <= hi]
        window = (lo, hi)
    if not jobs:
        raise SystemExit(f"no manifests under {', '.join(map(str, roots))}" + (f" written during {args.log}" if args.log else "") + ": run the DAG first")
    several = len(args.experiment) > 1  # job names then carry their experiment
    rss = {f"{e}/{job}" if several else job: mb
           for e in args.experiment for job, mb in peak_rss(Path("benchmarks") / "runs" / e, window).items()}
    stages: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "sum_s": 0.0, "max_s": 0.0})
    for j in jobs:
        s = stages[j["stage"]]
        s["jobs"] += 1
        s["sum_s"] = round(s["sum_s"] + j["wall_s"], 1)
        s["max_s"] = round(max(s["max_s"], j["wall_s"]), 1)
    start, end = min(j["start"] for j in jobs), max(j["end"] for j in jobs)
    result = {
        "experiment": args.experiment if several else args.experiment[0],
        "machine": {"cpu": cpu_model(), "platform": platform.platform(),
                    "cpu_capability": sorted({j["device"].get("cpu_capability") for j in jobs} - {None}),
                    "threads_seen": sorted({j["device"].get("torch_threads") for j in jobs if j["device"].get("torch_threads")})},
        "log": None if args.log is None else str(args.log),
        "snakemake_elapsed_min": None if elapsed is None else round(elapsed / 60, 2),
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
