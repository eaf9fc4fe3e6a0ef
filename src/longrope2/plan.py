"""``longrope2 plan``: every stage of an experiment with its jobs, GPUs per job, estimated GPU-hours, wall
time and disk -- from :mod:`longrope2.resources`' model, before anything runs. ESTIMATES, not measurements:
the wall time is the runtime a job asks for (the model's estimate x its 1.5 margin); GPU-hours are that
time x GPUs x jobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from . import config as cfgmod
from . import methods, resources


@dataclass
class Row:
    stage: str
    jobs: int
    gpus: int  # per job
    nodes: int  # per job
    hours: float  # wall time of one job (attempt 1)
    kept: float  # bytes left on disk, all jobs
    scratch: float  # bytes of checkpoints while one job runs

    @property
    def gpu_hours(self) -> float:
        return self.jobs * self.gpus * self.hours


def job_counts(cfg: Mapping) -> dict[str, int]:
    """Jobs per stage in the experiment's DAG (the rules' wildcards, as rules/common.smk expands them)."""
    real = cfg["model"]["source"] != "scale"
    searched = cfg["search"]["methods"]
    training_free, finetuned = methods.training_free(cfg), methods.finetuned(cfg)
    models = len(training_free) + len(finetuned)
    tasks = resources._tasks(cfg)
    suites = [s for s in cfg["evaluation"]["suites"] if s in ("longbench", "mmlu")]
    return {"critical-dims": 1, "corpus": 1,
            "import-model": (1 if real else 0) + (1 if cfg["extension"].get("as_is") else 0),
            "pretrain": 0 if real else 1, "retrieval": 1, "needles": 1, "search": len(searched),
            "baseline": len([m for m in training_free if m not in searched]), "export": len(training_free),
            "finetune": len(finetuned), "evaluate": models, "ruler-data": len(tasks),
            "ruler": models if tasks else 0, "suite": models * len(suites), "ruler-tables": 1,
            "tables": 3}  # training-free and fine-tuned tables, and the factor-shape figure


def imported_config(cfg: Mapping) -> Path | None:
    """The imported model's config.json where the import stage has run (as rules/common.smk finds it)."""
    path = Path("resources") / cfg["experiment"]["name"] / "base_model" / "model" / "config.json"
    return path if cfg["model"]["source"] != "scale" and path.is_file() else None


def plan(cfg: Mapping, imported: Path | str | None = None) -> list[Row]:
    size = resources.model_size(cfg, imported)
    counts = job_counts(cfg)
    rows = []
    for stage in resources.STAGES:
        if not counts[stage]:
            continue
        res = resources.stage_resources(stage, cfg, size)
        disk = resources.stage_disk(stage, cfg, size)
        rows.append(Row(stage, counts[stage], res["gpu"], res["nodes"], res["runtime"] / 60.0,
                        counts[stage] * disk["kept"], disk["scratch"]))
    return rows


def _size(nbytes: float) -> str:
    for unit, div in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= div:
            return f"{nbytes / div:.1f} {unit}"
    return "<1 MB"


def render(cfg: Mapping, imported: Path | str | None = None) -> str:
    """The plan as a fixed-width table with totals and the notes a reader needs to weigh it."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = plan(cfg, imported)
    size = resources.model_size(cfg, imported)
    cl = cfg.get("cluster", {})
    head = f"{'stage':<14}{'jobs':>5}{'GPUs/job':>10}{'nodes':>6}{'wall h/job':>12}{'GPU-h':>10}{'disk kept':>12}{'scratch/job':>13}"
    lines = [f"experiment {cfg['experiment']['name']}: {cfg['model'].get('id') or cfg['model']['source'] + ' model'}, "
             f"{size.parameters / 1e9:.2f}B parameters, L0 {cfg['model']['geometry']['original_length']} -> "
             f"{cfg['extension']['target_length']}; GPUs of {cl.get('gpu_mem_gb', 80)} GB, "
             f"{cl.get('gpus_per_node', 8)} per node",
             "ESTIMATES from longrope2.resources (no GPU number here is measured): wall = the runtime a job asks "
             "for (estimate x 1.5 margin)", "", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.stage:<14}{r.jobs:>5}{r.gpus:>10}{r.nodes:>6}{r.hours:>12.1f}{r.gpu_hours:>10.1f}"
                     f"{_size(r.kept):>12}{_size(r.scratch) if r.scratch else '-':>13}")
    lines.append("-" * len(head))
    total_gpu_h = sum(r.gpu_hours for r in rows)
    lines.append(f"{'total':<14}{sum(r.jobs for r in rows):>5}{'':>10}{'':>6}{'':>12}{total_gpu_h:>10.1f}"
                 f"{_size(sum(r.kept for r in rows)):>12}{_size(max((r.scratch for r in rows), default=0)):>13}")
    ft = cfg["finetune"]
    if cfg["model"]["source"] != "scale":
        g = resources.finetune_gpus(cfg, size) if not caught else next(r.gpus for r in rows if r.stage == "finetune")
        row, longest = resources.finetune_row_length(cfg), resources.longest_row(cfg, size, g)
        lines += ["", f"fine-tuning rows: {row} tokens on {g} GPU(s) ({ft.get('parallel', 'ddp')}, "
                      f"{ft.get('attn_implementation', 'sdpa')}, batch {ft['batch_size']} x grad_accum "
                      f"{ft['grad_accum']} x {g} GPUs = {ft['batch_size'] * ft['grad_accum'] * g} rows/step); the "
                      f"longest row one GPU holds is ~{longest} tokens (estimate; whole rows per GPU, no "
                      "sequence/context parallelism)"]
        if row < cfg["extension"]["target_length"]:
            lines.append(f"  finetune.row_length caps rows at {row} < the target {cfg['extension']['target_length']}: "
                         "the rescaled RoPE is trained on rows shorter than the target (not the paper's 128k rows)")
    lines += [f"warning: {w.message}" for w in caught]
    return "\n".join(lines) + "\n"


def main(files: list[str], imported: str | None = None) -> str:
    cfg = cfgmod.load(files)
    return render(cfg, imported or imported_config(cfg))
