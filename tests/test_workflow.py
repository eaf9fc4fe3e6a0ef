"""The Snakemake DAG: lint, dry runs of every shipped config, and the default run end to end."""

import json

import pytest

from conftest import REPO, snakemake

EXPERIMENTS = sorted(p.name for p in (REPO / "config/experiments").glob("*.yaml"))


def test_lint_is_clean():
    proc = snakemake("--lint", cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_dry_run_every_config(workdir, experiment):
    args = ["-n"] + (["--configfile", f"config/experiments/{experiment}"] if experiment else [])
    proc = snakemake(*args, cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "critical_dims" in proc.stdout


def test_bad_configfile_fails_with_one_line(workdir):
    (workdir / "bad.yaml").write_text("extension:\n  methods: [pi, alibi]\n")
    proc = snakemake("-n", "--configfile", "bad.yaml", cwd=workdir)
    assert proc.returncode != 0
    assert "invalid config: extension.methods.1: got 'alibi'; allowed: pi," in proc.stdout + proc.stderr


def test_micro_dag_runs_end_to_end(workdir):
    """The whole DAG on the micro config (the default's pretraining takes minutes, not seconds)."""
    proc = snakemake("--cores", "2", "--configfile", REPO / "tests/micro.yaml", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = workdir / "results/micro"
    cd = json.loads((res / "critical_dims/critical_dims.json").read_text())
    assert (cd["d_tcd"], cd["d10_tcd"], cd["original_length"], cd["target_length"]) == (4, 2, 256, 1024)
    retrieval = json.loads((res / "base_model/retrieval/retrieval.json").read_text())
    assert set(retrieval["lengths"]) == {"256", "512"}
    assert set(retrieval["lengths"]["256"]) == {"single", "multi"}
    for stage in ("critical_dims", "corpus", "base_model", "base_model/retrieval"):
        man = json.loads((res / stage / "manifest.json").read_text())
        assert man["config_hash"] and man["libraries"]["torch"]
    assert (res / "base_model/model/config.json").exists()
    import pandas as pd

    table = pd.read_csv(res / "tables/training_free/training_free.csv")
    assert list(table.columns[:4]) == ["method", "length", "needle_acc", "needle_ppl"]
    assert set(table["method"]) == {"none", "pi", "longrope", "longrope2", "ntk_rcd", "yarn_rcd"}
    assert set(table["length"]) == {256, 512, 1024}
    exported = json.loads((res / "models/training_free/longrope2/model/config.json").read_text())
    assert exported["rope_parameters"]["rope_type"] == "longrope"
    ft = pd.read_csv(res / "tables/finetune/finetune_comparison.csv")
    assert list(ft.columns) == ["method", "stage", "length", "needle_acc", "needle_ppl", "ppl"]
    assert set(ft["method"]) == {"pi", "longrope2", "longrope2_no_mixed"} and set(ft["stage"]) == {"before", "after"}
    assert len(ft) == 3 * 2 * 3
    finetuned = json.loads((res / "finetune/longrope2_no_mixed/rope.json").read_text())
    assert finetuned["no_mixed"] is True
    for rule in ("critical_dims", "corpus", "pretrain", "retrieval", "needles", "search_longrope2"):
        assert (workdir / f"benchmarks/runs/micro/{rule}.tsv").exists(), rule
        assert (workdir / f"logs/micro/{rule}.log").exists(), rule
    again = snakemake("--cores", "2", "-n", "--configfile", REPO / "tests/micro.yaml", cwd=workdir)
    assert "Nothing to be done" in again.stdout + again.stderr
