"""The Snakemake DAG: lint, dry runs of every shipped config, the micro run end to end, and reruns that
follow exactly the config keys each stage reads."""

import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from conftest import REPO, copy_workflow, run_cli, snakemake

EXPERIMENTS = sorted(p.name for p in (REPO / "config/experiments").glob("*.yaml"))
MICRO = REPO / "tests/micro.yaml"


def test_lint_is_clean():
    proc = snakemake("--lint", cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    import subprocess
    import sys
    from pathlib import Path

    snakefmt = Path(sys.executable).parent / "snakefmt"
    proc = subprocess.run([str(snakefmt), "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_dry_run_every_config(workdir, experiment):
    args = ["-n"] + (["--configfile", f"config/experiments/{experiment}"] if experiment else [])
    proc = snakemake(*args, cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "critical_dims" in proc.stdout


@pytest.mark.parametrize(
    "text, message",
    [
        ("extension:\n  methods: [pi, alibi]\n", "invalid config: extension.methods.1: got 'alibi'; allowed: pi,"),
        ("- a\n- b\n", "Config file must be given as JSON or YAML with keys at top level"),
        ("model:\n  geometry: {rope_base: .nan}\n", "invalid config: model.geometry.rope_base: must be a finite number"),
    ],
)
def test_bad_configfile_fails_with_one_line(workdir, text, message):
    (workdir / "bad.yaml").write_text(text)
    proc = snakemake("-n", "--configfile", "bad.yaml", cwd=workdir)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    """The whole DAG on the micro config (the default's pretraining takes minutes, not seconds)."""
    work = copy_workflow(tmp_path_factory.mktemp("micro_run"))
    proc = snakemake("--cores", "2", "--configfile", MICRO, cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work


def test_micro_dag_runs_end_to_end(micro_run):
    res = micro_run / "results/micro"
    cd = json.loads((res / "critical_dims/critical_dims.json").read_text())
    assert (cd["d_tcd"], cd["d10_tcd"], cd["original_length"], cd["target_length"]) == (4, 2, 256, 1024)
    retrieval = json.loads((res / "base_model/retrieval/retrieval.json").read_text())
    assert set(retrieval["lengths"]) == {"256", "512"}
    assert set(retrieval["lengths"]["256"]) == {"single", "multi"}
    for stage in ("critical_dims", "corpus", "base_model", "base_model/retrieval"):
        man = json.loads((res / stage / "manifest.json").read_text())
        assert man["config_hash"] and man["libraries"]["torch"]
    assert (res / "base_model/model/config.json").exists()
    table = pd.read_csv(res / "tables/training_free/training_free.csv")
    assert list(table.columns[:4]) == ["method", "length", "needle_acc", "needle_ppl"]
    # registry order: original RoPE, baselines, rcd baselines, searched methods
    assert list(dict.fromkeys(table["method"])) == ["none", "pi", "ntk_rcd", "yarn_rcd", "longrope", "longrope2"]
    assert set(table["length"]) == {256, 512, 1024}
    exported = json.loads((res / "models/training_free/longrope2/model/config.json").read_text())
    assert exported["rope_parameters"]["rope_type"] == "longrope"
    ft = pd.read_csv(res / "tables/finetune/finetune_comparison.csv")
    assert list(ft.columns) == ["method", "stage", "length", "needle_acc", "needle_ppl", "ppl", "needle_acc_lo",
                                "needle_acc_hi", "needle_ppl_lo", "needle_ppl_hi", "ppl_lo", "ppl_hi", "n", "n_ppl"]
    # every cell's 95% interval holds its estimate; n is the evaluation's sample count
    for metric in ("needle_acc", "needle_ppl", "ppl"):
        assert (ft[f"{metric}_lo"] <= ft[metric] + 1e-9).all() and (ft[metric] <= ft[f"{metric}_hi"] + 1e-9).all()
    assert (ft["n"] == 2).all() and (ft["n_ppl"] == 3).all() and (ft["ppl_hi"] > ft["ppl_lo"]).all()
    md = (res / "tables/finetune/finetune_comparison.md").read_text()
    assert "**needle_acc** (n = 2 per cell, 95% interval)" in md and "**ppl** (n = 3 per cell, 95% interval)" in md
    assert set(ft["method"]) == {"pi", "longrope2", "longrope2_no_mixed"} and set(ft["stage"]) == {"before", "after"}
    assert len(ft) == 3 * 2 * 3
    finetuned = json.loads((res / "finetune/longrope2_no_mixed/rope.json").read_text())
    assert finetuned["no_mixed"] is True
    for rule in ("critical_dims", "corpus", "pretrain", "retrieval", "needles", "search_longrope2"):
        assert (micro_run / f"benchmarks/runs/micro/{rule}.tsv").exists(), rule
        assert (micro_run / f"logs/micro/{rule}.log").exists(), rule
    again = snakemake("--cores", "2", "-n", "--configfile", MICRO, cwd=micro_run)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_search_stage_outputs(micro_run):
    """Needle search sets (answer last, never cut) and both searches' factors on the micro model."""
    import math

    import numpy as np
    from transformers import AutoTokenizer

    res = micro_run / "results/micro"
    tok = AutoTokenizer.from_pretrained(res / "corpus/tokenizer")
    with np.load(res / "needles/search_needle.npz") as z:
        ids, labels = z["input_ids"], z["labels"]
    assert ids.shape == (2, 1024) and (ids[:, 0] == tok.bos_token_id).all()
    assert ((labels != -100).sum(1) == 8).all() and (labels[:, -8:] != -100).all()
    for method in ("longrope2", "longrope"):
        f = json.loads((res / "search" / method / "factors.json").read_text())
        assert f["method"] == method and len(f["long_factor"]) == 8 and f["short_factor"] == [1.0] * 8
        assert f["hf_rope_parameters"]["rope_type"] == "longrope"
        assert f["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))
        if method == "longrope2":
            assert 2 <= f["d_rcd"] <= 4 and f["fitness"]["objective"] == "search_needle"
        else:
            assert f["d_rcd"] == 0 and f["fitness"]["objective"] == "search_plain" and max(f["long_factor"]) <= 5.0
        assert (res / "search" / method / "trace.csv").read_text().startswith("generation,best_nll")
        # the best candidate re-scored on the search set and on held-out (test-split) samples, with intervals
        check = f["best_on_heldout"]
        for part in ("search_set", "heldout"):
            ppl = check[part]["ppl"]
            assert check[part]["n"] == 2 and 1.0 <= ppl["lo"] <= ppl["estimate"] <= ppl["hi"]
        assert isinstance(check["agree"], bool)
        # and against the unselected references (search.heldout_references), paired sample by sample
        assert set(check["references"]) == {"ntk", "yarn"}
        for ref in check["references"].values():
            for part in ("search_set", "heldout"):
                diff = ref["best_minus_reference"][part]
                assert diff["n"] == 2 and diff["lo"] <= diff["estimate"] <= diff["hi"]
                # a mean of per-sample differences: ln(best's PPL / the reference's) on the same samples
                want = math.log(check[part]["ppl"]["estimate"]) - math.log(ref["ppl"][part]["estimate"])
                assert diff["estimate"] == pytest.approx(want, abs=1e-9)
            lo_hi = [ref["best_minus_reference"][p] for p in ("search_set", "heldout")]
            assert ref["agree"] == (lo_hi[0]["lo"] <= lo_hi[1]["hi"] and lo_hi[1]["lo"] <= lo_hi[0]["hi"])


def test_all_pairs_gap_benchmark_scores_the_stages_own_candidates(micro_run):
    """benchmarks/all_pairs_gap.py: rerun at the stage's budget, LongRoPE2's search finds the stage's best;
    its LongRoPE2 row is the stage's held-out check; the spliced row is the other method's factors below
    d_rcd and LongRoPE2's above; the nearest in-space point is sought over every d_rcd the search explores."""
    import subprocess
    import sys

    import numpy as np

    res, out = micro_run / "results/micro", micro_run / "all_pairs_gap.json"
    threads = json.loads((res / "search/longrope2/manifest.json").read_text())["device"]["torch_threads"]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/all_pairs_gap.py"), "--results", str(res),
                           "--other", "longrope", "--budget-multiple", "1", "--threads", str(threads), "--out", str(out)],
                          cwd=micro_run, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gap = json.loads(out.read_text())
    lr2 = json.loads((res / "search/longrope2/factors.json").read_text())
    v1 = json.loads((res / "search/longrope/factors.json").read_text())
    rows, d = gap["candidates"], lr2["d_rcd"]
    np.testing.assert_allclose(rows["longrope2_budget_x1"]["long_factor"], lr2["long_factor"], atol=1e-4)
    assert gap["budget_search"]["d_rcd"] == d
    assert rows["longrope2"]["heldout"]["ppl"]["estimate"] == pytest.approx(
        lr2["best_on_heldout"]["heldout"]["ppl"]["estimate"], rel=1e-6)
    np.testing.assert_allclose(rows["longrope2"]["long_factor"], lr2["long_factor"], atol=1e-4)
    assert rows["longrope2"]["search"]["ppl"]["estimate"] == pytest.approx(
        lr2["best_on_heldout"]["search_set"]["ppl"]["estimate"], rel=1e-6)
    np.testing.assert_allclose(rows["longrope_low+longrope2_high"]["long_factor"],
                               v1["long_factor"][:d] + lr2["long_factor"][d:], atol=1e-4)
    assert set(gap["nearest_by_d_rcd_search_ppl"]) == {str(x) for x in range(gap["d10_tcd"], gap["d_tcd"] + 1)}
    # pairs below the floor of LongRoPE2's space: the NTK fill anchored at s from d_tcd, s from there on
    s, d_tcd, b = gap["scale_factor"], gap["d_tcd"], np.asarray(v1["long_factor"])
    floor = [s ** (i / d_tcd) if i < d_tcd else s for i in range(len(b))]
    assert gap["longrope_below_space_floor"] == [i for i in range(len(b)) if b[i] < floor[i] - 1e-9]


def test_every_file_a_job_writes_is_declared(micro_run):
    """Files under results/ are declared outputs, Snakemake's markers, or resumable state in .checkpoints."""
    summary = snakemake("--configfile", MICRO, "--summary", cwd=micro_run)
    declared = {line.split("\t")[0] for line in summary.stdout.splitlines()[1:] if line.strip()}
    res = micro_run / "results/micro"
    for path in res.rglob("*"):
        rel = path.relative_to(micro_run)
        if ".checkpoints" in rel.parts or path.name == ".snakemake_timestamp" or not path.is_file():
            continue
        assert any(str(rel) == d or str(rel).startswith(d.rstrip("/") + "/") for d in declared), f"undeclared: {rel}"


def test_training_free_export_weighs_only_its_config(micro_run):
    export = micro_run / "results/micro/models/training_free/longrope2/model"
    own = sum(f.stat().st_size for f in export.iterdir() if not f.is_symlink())
    assert own < 1_000_000 and (export / "model.safetensors").is_symlink()


def test_hand_run_stage_equals_the_rule(micro_run, tmp_path):
    """The documented by-hand command (config files) gives the rule's output (config subset as JSON)."""
    out = tmp_path / "critical_dims"
    run_cli("critical-dims", "--config", micro_run / "config/config.yaml", MICRO, "--out", out)
    rule_out = micro_run / "results/micro/critical_dims"
    for name in ("critical_dims.json", "critical_dims.png"):
        assert (out / name).read_bytes() == (rule_out / name).read_bytes(), name
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (out, rule_out))
    assert a["config"] == b["config"] and a["config_hash"] == b["config_hash"]


def job_counts(stdout: str) -> dict[str, int]:
    """Rule -> planned jobs, from the first 'Job stats' table of a dry run ('all' left out)."""
    if "Nothing to be done" in stdout:
        return {}
    table = stdout.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "all"}


RULER = {"ruler_training_free": 6, "ruler_finetuned": 3, "table_ruler": 1}
RULER_DATA = {"ruler_data": 7}  # one job per task (5 RULER, heat map, passkey), both lengths in each
AFTER_SEARCH = {"search": 2, "factor_shape": 1, "baseline": 2, "export": 4, "evaluate_training_free": 4, "table_training_free": 1,
                "finetune": 2, "evaluate_finetuned": 2, "table_finetune": 1,
                "ruler_training_free": 4, "ruler_finetuned": 2, "table_ruler": 1}
EVALUATIONS = {"evaluate_training_free": 6, "table_training_free": 1, "evaluate_finetuned": 3, "table_finetune": 1}
AFTER_MODEL = {"retrieval": 1, "search": 2, "factor_shape": 1, "baseline": 2, "export": 6, "evaluate_training_free": 6,
               "table_training_free": 1, "finetune": 3, "evaluate_finetuned": 3, "table_finetune": 1, **RULER}
ALL_GEOMETRY = {"search": 2, "factor_shape": 1, "baseline": 4, "export": 6, "evaluate_training_free": 6, "table_training_free": 1,
                "finetune": 3, "evaluate_finetuned": 3, "table_finetune": 1, **RULER}


def _keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


RERUNS = [
    ({"critical_dims": {"figure_dpi": 100}}, {"critical_dims": 1}),
    ({"retrieval": {"samples": 5}}, {"retrieval": 1}),
    ({"cluster": {"gpu_mem_gb": 40}}, {}),  # scheduling only: no stage reads it
    ({"finetune": {"lr": 0.001}}, {"finetune": 3, "evaluate_finetuned": 3, "table_finetune": 1,
                                   "ruler_finetuned": 3, "table_ruler": 1}),
    ({"needles": {"eval_samples": 3}}, EVALUATIONS),
    ({"needles": {"ppl_samples": 4}}, EVALUATIONS),
    ({"evaluation": {"ruler": {"training_free": ["none"]}}}, {"table_ruler": 1}),  # fewer inputs, nothing rescored
    ({"evaluation": {"batch_tokens": 4096}}, EVALUATIONS),
    ({"evaluation": {"batch_size": 2}}, RULER),
    ({"evaluation": {"effective_threshold": 50}}, {"table_ruler": 1}),
    ({"evaluation": {"ruler": {"samples": 3}}}, {"ruler_data": 5, **RULER}),  # not the heat map's or passkey's
    ({"evaluation": {"passkey": {"samples": 3}}}, {"ruler_data": 1, **RULER}),
    ({"search": {"generations": 2}}, AFTER_SEARCH),
    ({"needles": {"search_samples": 3}}, {"needles": 1, **AFTER_SEARCH}),
    ({"pretrain": {"lr": 0.003}}, {"pretrain": 1, **AFTER_MODEL}),
    ({"experiment": {"seed": 8}}, {"pretrain": 1, "needles": 1, **RULER_DATA, **AFTER_MODEL}),
    ({"model": {"geometry": {"rope_base": 20000}}}, {"critical_dims": 1, "pretrain": 1, "retrieval": 1, **ALL_GEOMETRY}),
    ({"extension": {"target_length": 2048}}, {"critical_dims": 1, "needles": 1, **RULER_DATA, **ALL_GEOMETRY}),
    ({"tokenizer": {"vocab_size": 600}}, {"corpus": 1, "pretrain": 1, "needles": 1, **RULER_DATA, **AFTER_MODEL}),
]


@pytest.mark.parametrize("override, expected", RERUNS, ids=[next(_keys(o)) for o, _ in RERUNS])
def test_editing_a_key_reruns_exactly_its_readers(micro_run, tmp_path, override, expected):
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(override))
    proc = snakemake("-n", "--configfile", MICRO, path, cwd=micro_run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert job_counts(proc.stdout) == expected



def test_report_builds_with_every_table_and_figure(micro_run, tmp_path):
    report = tmp_path / "report.html"
    proc = snakemake("--report", report, "--configfile", MICRO, cwd=micro_run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = report.read_text(errors="replace")
    for name in ("ruler.csv", "niah_heatmaps.png", "passkey.csv", "comparisons.csv", "training_free.csv"):
        assert name in html, name


def test_ruler_tables_of_the_micro_run(micro_run):
    res = micro_run / "results/micro"
    table = pd.read_csv(res / "tables/ruler/ruler.csv")
    tf = table[(table["stage"] == "training-free") & (table["length"] == "1024")]
    assert list(tf["method"]) == ["none", "pi", "ntk_rcd", "yarn_rcd", "longrope", "longrope2"]
    assert set(tf["n"]) == {8} and set(tf["tasks_run"]) == {4}  # qa_1 has no data offline
    assert set(table.loc[table["stage"] == "after", "method"]) == {"pi", "longrope2", "longrope2_no_mixed"}
    md = (res / "tables/ruler/ruler.md").read_text()
    assert "not run: qa_1 at 1024: evaluation.ruler.qa_files.squad" in md and "Measured on: " in md
    scores = json.loads((res / "eval/finetuned/longrope2/ruler/scores.json").read_text())
    assert scores["tasks"]["qa_1"]["1024"]["not_run"] and scores["tasks"]["passkey"]["256"]["n"] == 2


def test_config_path_with_shell_metacharacters_runs_safely(workdir):
    """No config path reaches a shell: rules pass the config subset, quoted."""
    weird = workdir / "m||touch X||x.yaml"
    shutil.copy(MICRO, weird)
    proc = snakemake("results/micro/critical_dims/critical_dims.json", "--cores", "1", "--configfile", weird, cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (workdir / "X").exists() and (workdir / "results/micro/critical_dims/critical_dims.json").is_file()


def test_restated_values_or_another_path_rerun_nothing(micro_run, tmp_path):
    cfg = yaml.safe_load(MICRO.read_text())
    restated = tmp_path / "restated.yaml"
    restated.write_text(yaml.safe_dump({"search": cfg["search"], "experiment": cfg["experiment"],
                                        "model": {"geometry": {"rope_base": 10000.0}}}))
    moved = tmp_path / "elsewhere with space" / "micro copy.yaml"
    moved.parent.mkdir()
    shutil.copy(MICRO, moved)
    for files in ([MICRO, restated], [moved]):
        proc = snakemake("-n", "--configfile", *files, cwd=micro_run)
        assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout
