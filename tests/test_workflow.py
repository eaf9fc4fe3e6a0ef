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


def test_default_dag_runs(workdir):
    proc = snakemake("--cores", "2", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = workdir / "results/scale/critical_dims"
    res = json.loads((out / "critical_dims.json").read_text())
    assert (res["d_tcd"], res["d10_tcd"], res["original_length"], res["target_length"]) == (13, 5, 256, 1024)
    assert json.loads((out / "manifest.json").read_text())["config_hash"]
    assert (workdir / "logs/scale/critical_dims.log").exists()
    assert (workdir / "benchmarks/runs/scale/critical_dims.tsv").exists()
    # nothing left to do on a second invocation
    again = snakemake("--cores", "2", "-n", cwd=workdir)
    assert "Nothing to be done" in again.stdout + again.stderr
