"""Replicates: the paper experiment runs the whole DAG once per seed and summarises the tables across seeds."""

import json
import math

import pandas as pd
import pytest

from conftest import REPO, run_cli, snakemake
from longrope2.stages import seeds


def test_interval_across_seeds_is_students_t():
    r = seeds.across(pd.Series([1.0, 2.0, 3.0]).to_numpy())
    assert r["mean"] == 2.0 and r["seeds"] == 3
    assert r["hi"] - r["mean"] == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-6)
    assert math.isnan(seeds.across(pd.Series([5.0]).to_numpy())["lo"])  # one seed: no interval


def fake_run(root, seed, shift):
    (root / "tables" / "ruler").mkdir(parents=True)
    (root / "tables" / "training_free").mkdir(parents=True)
    (root / "tables" / "finetune").mkdir(parents=True)
    (root / "search" / "longrope2").mkdir(parents=True)
    pd.DataFrame({"stage": ["after", "after"], "method": ["yarn", "longrope2"], "length": [2048, 2048],
                  "score": [50 + shift, 60 + shift], "lo": 0, "hi": 0, "n": 200}).to_csv(root / "tables/ruler/ruler.csv", index=False)
    pd.DataFrame({"stage": ["after", "after"], "method": ["longrope2"] * 2, "task": ["niah_single_1", "cwe"],
                  "length": [512, 512], "score": [90 + 2 * shift, None], "lo": 0, "hi": 0, "n": [20, 0]}) \
        .to_csv(root / "tables/ruler/ruler_tasks.csv", index=False)  # cwe: not run at 512
    pd.DataFrame({"comparison": ["LongRoPE2 vs YaRN"], "stage": ["after"], "a": ["longrope2"], "b": ["yarn"],
                  "length": [2048], "diff": [10 + shift]}).to_csv(root / "tables/ruler/comparisons.csv", index=False)
    pd.DataFrame({"method": ["none", "longrope2", "longrope2_plain_ppl", "yarn"], "length": [512, 2048, 2048, 2048],
                  "needle_acc": [0.9, 0.2 + 0.05 * seed, 0.1, 0.3], "needle_ppl": [1.1, 2.0, 2.0 * math.e, math.inf],
                  "ppl": [30.0] * 4}).to_csv(root / "tables/training_free/training_free.csv", index=False)
    pd.DataFrame({"method": ["longrope2", "longrope2_no_mixed", "longrope2", "yarn"],
                  "stage": ["after", "after", "before", "before"], "length": [2048] * 4,
                  "needle_acc": [0.5, 0.2 + 0.1 * seed, 0.1, 0.1], "needle_ppl": [1.5, 3.0, 4.0, 4.0], "ppl": [20.0] * 4}) \
        .to_csv(root / "tables/finetune/finetune_comparison.csv", index=False)
    # over-fitting check: the held-out set 0.3 nats harder for every method on seed 2 only (best and
    # reference alike), and the best 0.30, 0.32, 0.34 nats worse against YaRN on the held-out set than on its own
    hard = 0.3 if seed == 2 else 0.0
    ppl = lambda nll, w=0.1: {"estimate": math.exp(nll), "lo": math.exp(nll - w), "hi": math.exp(nll + w)}
    paired = lambda d: {"estimate": d, "lo": d - 0.05, "hi": d + 0.05, "n": 32}
    check = {"search_set": {"n": 32, "ppl": ppl(1.0)}, "heldout": {"n": 32, "ppl": ppl(1.0 + hard)}, "agree": seed != 2,
             "references": {"ntk": {"best_minus_reference": {"search_set": paired(-0.5), "heldout": paired(-0.5)},
                                    "agree": True},
                            "yarn": {"best_minus_reference": {"search_set": paired(0.2),
                                                              "heldout": paired(0.5 + 0.02 * seed)}, "agree": seed == 0}}}
    (root / "search" / "longrope2" / "factors.json").write_text(json.dumps({"d_rcd": 14 + seed, "best_on_heldout": check}))
    (root / "base_model" / "retrieval").mkdir(parents=True)
    (root / "base_model" / "retrieval" / "retrieval.json").write_text(
        f'{{"lengths": {{"512": {{"single": {0.5 + 0.1 * seed}, "multi": 0.1}}}}, "samples": 200}}')


def test_seeds_stage_summarises_every_table(tmp_path):
    runs = [tmp_path / f"paper-seed{s}" for s in (1, 2, 3)]
    for i, r in enumerate(runs):
        fake_run(r, i, shift=i)
    out = tmp_path / "seeds"
    run_cli("seeds", "--config-json", '{"experiment":{"seeds":[1,2,3]}}', "--runs", *runs, "--out", out)
    ruler = pd.read_csv(out / "ruler.csv")
    lr2 = ruler[ruler["method"] == "longrope2"].iloc[0]
    assert lr2["mean"] == 61 and lr2["seeds"] == 3 and lr2["per_seed"] == "60 61 62"
    tasks = pd.read_csv(out / "ruler_tasks.csv").set_index("task")
    assert tasks.loc["niah_single_1", "per_seed"] == "90 92 94" and tasks.loc["cwe", "seeds"] == 0
    assert "| cwe |" not in (out / "seeds.md").read_text()  # a cell no seed ran: in the CSV, not the table
    comp = pd.read_csv(out / "comparisons.csv").iloc[0]
    assert comp["verdict"] == "holds" and comp["lo"] > 0  # 10, 11, 12: the interval excludes 0
    needles = pd.read_csv(out / "needle_comparisons.csv")
    free = needles[needles["table"] == "training_free"].set_index(["b", "metric"])
    plain = free.loc[("longrope2_plain_ppl", "needle_acc")]  # finding (d): 0.1, 0.15, 0.2 better
    assert plain["table"] == "training_free" and plain["per_seed"] == "0.1 0.15 0.2" and plain["verdict"] == "holds"
    assert free.loc[("longrope2_plain_ppl", "needle_ppl"), "mean"] == pytest.approx(1.0)  # ln(2e / 2)
    assert free.loc[("yarn", "needle_acc"), "verdict"] == "no difference"  # -0.1, -0.05, 0
    assert free.loc[("yarn", "needle_ppl"), "seeds"] == 0  # an overflowing PPL gives no ratio
    assert pd.read_csv(out / "d_rcd.csv")["mean"].iloc[0] == 15
    base = pd.read_csv(out / "base_retrieval.csv").set_index("task")
    assert base.loc["single", "mean"] == pytest.approx(0.6) and base.loc["single", "per_seed"] == "0.5 0.6 0.7"
    assert base.loc["multi", "lo"] == pytest.approx(0.1) and base.loc["multi", "seeds"] == 3  # no spread
    tuned = needles[needles["table"] == "finetune"].set_index(["stage", "b", "metric"])
    mixed = tuned.loc[("after", "longrope2_no_mixed", "needle_acc")]  # compared within the "after" rows only
    assert mixed["per_seed"] == "0.3 0.2 0.1" and mixed["verdict"] == "no difference"  # [-0.05, 0.45]
    assert tuned.loc[("after", "longrope2_no_mixed", "needle_ppl"), "mean"] == pytest.approx(math.log(2))
    before = tuned.loc[("before", "yarn", "needle_acc")]
    assert before["mean"] == 0 and before["verdict"] == "no difference"
    fit = pd.read_csv(out / "overfit.csv").set_index(["reference", "metric"])
    literal = fit.loc[("-", "heldout_minus_search")]  # 0, 0, 0.3: the seed with harder held-out documents
    assert literal["per_seed"] == "0 0 0.3" and literal["verdict"] == "no difference"
    assert fit.loc[("-", "agree"), "mean"] == pytest.approx(2 / 3) and math.isnan(fit.loc[("-", "agree"), "lo"])
    ntk = fit.loc[("ntk", "heldout_minus_search")]  # paired: the harder split cancels
    assert ntk["mean"] == pytest.approx(0) and ntk["verdict"] == "no difference"
    yarn = fit.loc[("yarn", "heldout_minus_search")]  # the best's edge shrinks on fresh samples, every seed
    assert yarn["mean"] == pytest.approx(0.32) and yarn["lo"] > 0 and yarn["verdict"] == "over-fits"
    assert "search over-fitting check" in (out / "seeds.md").read_text()
    assert pd.read_csv(out / "retention.csv").empty  # a table the runs did not make
    assert "Across 3 seeds" in (out / "seeds.md").read_text() and (out / "manifest.json").is_file()


def test_paper_experiment_runs_every_stage_once_per_seed(workdir):
    proc = snakemake("-n", "--configfile", "config/experiments/paper.yaml", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for seed in (1234, 2345, 3456):
        assert f"seed{seed}_pretrain" in proc.stdout and f"seed{seed}_finetune" in proc.stdout
    assert "seeds_summary" in proc.stdout
