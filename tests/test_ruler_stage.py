"""The RULER stages: data per task (every length in one job) through the CLI, scoring through lm-eval with an oracle and a
silent model, and the tables' intervals on hand-made scores."""

import json

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_cli
from longrope2 import config as lr2config
from longrope2.errors import ConfigError
from longrope2.evaluation import ruler
from longrope2.stages import ruler_data, ruler_eval, ruler_tables

SQUAD = {"data": [{"title": "T", "paragraphs": [
    {"context": f"Paragraph {i}: the capital of land {i} is city {i}.",
     "qas": [{"question": f"What is the capital of land {i}?", "answers": [{"text": f"city {i}"}], "is_impossible": False}]}
    for i in range(6)]}]}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = tmp_path_factory.mktemp("ruler_cfg")
    (root / "squad.json").write_text(json.dumps(SQUAD))
    override = root / "override.yaml"
    override.write_text(yaml.safe_dump({"evaluation": {"ruler": {"samples": 3, "qa_files": {"squad": str(root / "squad.json")}},
                                                       "niah": {"depths": 3, "samples": 2}, "passkey": {"samples": 4}}}))
    return [REPO / "config/config.yaml", override]


def data(config, tiny_corpus, out, task, lengths, *extra, check=True):
    """One ruler-data job: ``task`` at every one of ``lengths``, into the task folder ``out``."""
    return run_cli("ruler-data", "--config", *config, *extra, "--tokenizer", tiny_corpus / "tokenizer", "--corpus",
                   tiny_corpus, "--task", task, "--lengths", *lengths, "--out", out, check=check)


DATA = {"niah_single_2": [1024], "vt": [1024], "qa_1": [1024], "niah_depth": [1024], "passkey": [1024, 512],
        "fwe": [256]}


@pytest.fixture(scope="module")
def data_dirs(config, tiny_corpus, tmp_path_factory):
    """The (task, length) folders ruler_data/<task>/<length> of one job per task."""
    root = tmp_path_factory.mktemp("ruler_data")
    for task, lengths in DATA.items():
        data(config, tiny_corpus, root / task, task, lengths)
    return [root / task / str(L) for task, lengths in DATA.items() for L in lengths]


def test_data_stage_sizes_samples_and_marks_what_cannot_run(data_dirs, config, tiny_corpus, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")
    infos = ruler_eval.read_tasks([str(d) for d in data_dirs])
    by = {(i["task"], i["length"]): i for i in infos}
    assert by[("niah_single_2", 1024)]["samples"] == 3 and "test split" in by[("niah_single_2", 1024)]["haystack"]
    assert by[("niah_depth", 1024)]["samples"] == 6 and by[("passkey", 512)]["samples"] == 4
    assert by[("fwe", 256)]["samples"] == 0 and "too short for RULER task fwe" in by[("fwe", 256)]["not_run"]
    for task, lengths in DATA.items():  # one manifest per task, in the task folder, naming every length
        manifest = json.loads((data_dirs[0].parent.parent / task / "manifest.json").read_text())
        assert manifest["outputs"].keys() == {str(L) for L in lengths} and manifest["config"]["lengths"] == lengths
        assert not (data_dirs[0].parent.parent / task / str(lengths[0]) / "manifest.json").exists()
    # the --config files are cut to the keys of the task: passkey reads neither RULER's samples nor the QA files
    manifest = json.loads((data_dirs[4].parent / "manifest.json").read_text())
    assert manifest["config"]["evaluation"] == {"passkey": {"samples": 4}, "ruler": {"max_new_tokens": {"niah": 48}}}
    # a task folder reads as its lengths, shortest first
    assert [(i["task"], i["length"]) for i in ruler_eval.read_tasks([str(data_dirs[4].parent)])] == \
        [("passkey", 512), ("passkey", 1024)]
    with pytest.raises(ConfigError, match=r"^--data: passkey at 512 is given twice"):
        ruler_eval.read_tasks([str(data_dirs[4].parent), str(data_dirs[5])])
    # a (task, length) folder is checked against the task's manifest, as is the task folder
    import shutil

    from longrope2 import artifacts

    artifacts.forget_verified()
    artifacts.verify_inputs([data_dirs[5], data_dirs[4].parent])
    shutil.copytree(data_dirs[4].parent, tmp_path / "passkey")
    with open(tmp_path / "passkey/512/samples.jsonl", "a") as f:
        f.write("\n")
    for changed in (tmp_path / "passkey/512", tmp_path / "passkey"):
        artifacts.forget_verified()
        with pytest.raises(artifacts.InputError, match="changed or corrupt since its stage wrote it"):
            artifacts.verify_inputs([changed])
    artifacts.forget_verified()
    for d in data_dirs:
        docs = [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]
        for doc in docs:  # fits its length with this tokenizer, and the answer is in the context
            assert len(ruler.prompt_ids(tok, doc["input"] + doc["gen_prefix"])) + doc["max_new_tokens"] <= doc["length"]
            assert all(o in doc["input"] for o in doc["outputs"])
    depths = sorted(json.loads(line)["depth"] for line in (data_dirs[3] / "samples.jsonl").read_text().splitlines())
    assert depths == pytest.approx([0, 0, 0.5, 0.5, 1, 1], abs=0.1)
    # same seed and inputs: the same bytes, whatever other lengths the job also wrote
    data(config, tiny_corpus, tmp_path / "again", "passkey", [1024])
    assert (tmp_path / "again/1024/samples.jsonl").read_bytes() == (data_dirs[4] / "samples.jsonl").read_bytes()


def test_qa_without_file_or_hub_is_not_run(config, tiny_corpus, tmp_path, monkeypatch):
    no_file = tmp_path / "no_file.yaml"
    no_file.write_text("evaluation:\n  ruler:\n    qa_files: {hotpotqa: null}\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    data(config, tiny_corpus, tmp_path / "qa_2", "qa_2", [512, 1024], no_file)
    for length in (512, 1024):  # marked per length
        info = json.loads((tmp_path / f"qa_2/{length}/task.json").read_text())
        assert (info["length"], info["samples"]) == (length, 0)
        assert info["not_run"].startswith("evaluation.ruler.qa_files.hotpotqa: no local file")
        assert (tmp_path / f"qa_2/{length}/samples.jsonl").read_text() == ""


@pytest.mark.parametrize("override, task, lengths, message", [
    ("", "niah_single_1", [2048, 4096], "evaluation.lengths: 4096 is above what any method supports; allowed: lengths "
                                        "up to extension.target_length=2048"),
    ("", "passkey", [512, 512], "--lengths: 512 given twice; allowed: distinct lengths"),
    ("", "passkey", [0, 512], "--lengths: must be positive token counts, got 0"),
    ("evaluation:\n  ruler:\n    qa_files: {squad: /nonexistent/dev.json}\n", "qa_1", [1024],
     "evaluation.ruler.qa_files.squad: /nonexistent/dev.json is not a file"),
    ("evaluation:\n  ruler:\n    haystack: EMPTY\n", "niah_single_2", [1024], "evaluation.ruler.haystack: "),
])
def test_bad_input_is_one_line_and_writes_nothing(config, tiny_corpus, tmp_path, override, task, lengths, message):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad.yaml"
    bad.write_text(override.replace("EMPTY", str(tmp_path / "empty")))
    proc = data(config, tiny_corpus, tmp_path / "out", task, lengths, *([bad] if override else []), check=False)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_task_lists_the_allowed_ones(config, tiny_corpus, tmp_path):
    proc = data(config, tiny_corpus, tmp_path / "out", "niah_single_9", [1024], check=False)
    assert proc.returncode == 2 and "niah_single_9" in proc.stderr and "passkey" in proc.stderr


def test_each_task_is_given_only_the_keys_it_reads(tiny_corpus, tmp_path):
    keys = {task: set(ruler_data.config_keys(task)) for task in ruler.ALL_TASKS}
    always = {"experiment.seed", "extension.target_length", "evaluation.ruler.max_new_tokens"}
    assert keys["passkey"] == always | {"evaluation.passkey.samples"}
    # no essay haystack, no QA, no passkey
    assert keys["niah_single_1"] == always | {"evaluation.ruler.samples", "evaluation.ruler.samples_at"}
    assert keys["niah_single_2"] == keys["niah_single_1"] | {"evaluation.ruler.haystack"}
    assert keys["qa_1"] == keys["niah_single_1"] | {"evaluation.ruler.qa_files"}
    assert keys["niah_depth"] == always | {"evaluation.niah.depths", "evaluation.niah.samples"}
    assert set().union(*keys.values()) == set(ruler_data.CONFIG_KEYS)
    # a subset holding a key the task does not read is refused, before any work
    cfg = lr2config.load([REPO / "config/config.yaml"])
    for task, extra in [("passkey", "evaluation.ruler.qa_files"), ("niah_single_1", "evaluation.passkey.samples")]:
        subset = lr2config.subset_json(cfg, [*ruler_data.config_keys(task), extra])
        proc = run_cli("ruler-data", "--config-json", subset, "--tokenizer", tiny_corpus / "tokenizer", "--corpus",
                       tiny_corpus, "--task", task, "--lengths", 256, "--out", tmp_path / task, check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "--config-json: holds keys this stage does not read; it reads: " + ", ".join(
            ruler_data.config_keys(task)) in proc.stderr
        assert not (tmp_path / task).exists()


def test_oracle_scores_one_and_silence_zero_on_every_generated_task(data_dirs, tiny_corpus, tiny_llama):
    """Generated data -> local lm-eval tasks -> LongContextLM: plumbing and metrics at once."""
    from test_lm_eval import ScriptedLM

    model, tok = tiny_llama
    infos = ruler_eval.read_tasks([str(d) for d in data_dirs])
    docs = [json.loads(line) for d in data_dirs for line in (d / "samples.jsonl").read_text().splitlines()]
    answers = {d["input"] + d["gen_prefix"]: " " + " ".join(d["outputs"]) for d in docs}
    lm = ScriptedLM(model, tok, answers, max_length=1024, batch_size=4)
    scores, records = ruler_eval.score(lm, infos)
    assert len(records) == len(docs)
    by_key = {(d["task"], d["length"], d["index"]): d for d in docs}
    fits = 0
    for rec in records:  # an answer longer than its task's budget is cut (vt's 5 names with a 512-token vocabulary)
        doc = by_key[(rec["task"], rec["length"], rec["index"])]
        if len(tok.encode(answers[doc["input"] + doc["gen_prefix"]], add_special_tokens=False)) < doc["max_new_tokens"]:
            assert rec["score"] == 1.0, rec
            fits += 1
    assert fits >= 0.8 * len(records)
    assert {c["not_run"] is None for cells in scores.values() for c in cells.values()} == {True, False}
    silent, _ = ruler_eval.score(ScriptedLM(model, tok, dict.fromkeys(answers, ""), max_length=1024), infos)
    assert {c["score"] for cells in silent.values() for c in cells.values() if not c["not_run"]} == {0.0}


def test_data_of_another_tokenizer_is_refused(data_dirs, tmp_path):
    from conftest import word_tokenizer

    infos = ruler_eval.read_tasks([str(data_dirs[0])])
    with pytest.raises(ConfigError, match=r"^--model: m has another tokenizer .* allowed: a model sharing"):
        ruler_eval.check_tokenizer(infos, word_tokenizer(64), "m")


# ------------------------------------------------------------------------------------------------ tables


def fake_run(root, method, stage, scores_by_task, lengths=(256, 1024), not_run=()):
    """A ruler stage's outputs with given per-sample scores: {task: [score, ...]} at every length."""
    folder = root / f"{method}-{stage}"
    folder.mkdir()
    tasks, records = {}, []
    for task, values in scores_by_task.items():
        for L in lengths:
            if (task, L) in not_run:
                tasks.setdefault(task, {})[str(L)] = {"n": 0, "score": None, "not_run": "too short"}
                continue
            tasks.setdefault(task, {})[str(L)] = {"n": len(values), "score": sum(values) / len(values), "not_run": None}
            records += [{"task": task, "length": L, "index": i, "depth": (i % 3) / 2, "score": v,
                         "prediction": "", "references": ["x"]} for i, v in enumerate(values)]
    (folder / "scores.json").write_text(json.dumps({"method": method, "stage": stage, "tasks": tasks}))
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(folder / "scores.json")


def test_tables_carry_counts_intervals_and_verdicts(tmp_path):
    good = {"niah_single_1": [1.0] * 20, "vt": [1.0] * 10 + [0.0] * 10, "niah_depth": [1.0, 0.0, 1.0] * 3,
            "passkey": [1.0] * 18 + [0.0] * 2}
    paths = [fake_run(tmp_path, "none", "training-free", good, not_run={("vt", 256)}),
             fake_run(tmp_path, "longrope2", "training-free", good, not_run={("vt", 256)}),
             fake_run(tmp_path, "yarn", "training-free", {**good, "niah_single_1": [0.0] * 20}, not_run={("vt", 256)}),
             fake_run(tmp_path, "longrope2", "after", good, not_run={("vt", 256)})]
    df, cells, _ = ruler_tables.load(paths)
    t2 = ruler_tables.table2(df, cells, threshold=85.6).set_index(["stage", "method", "length"])
    at_256, at_1024 = t2.loc[("training-free", "longrope2", "256")], t2.loc[("training-free", "longrope2", "1024")]
    assert (at_256["score"], at_256["n"], at_256["tasks_run"]) == (100.0, 20, 1)  # vt did not run at 256
    assert (at_1024["score"], at_1024["n"], at_1024["tasks_run"], at_1024["tasks_total"]) == (75.0, 40, 2, 2)
    assert at_1024["lo"] < 75.0 < at_1024["hi"]
    assert t2.loc[("training-free", "longrope2", "avg"), "effective_length"] == 256
    comp = ruler_tables.comparisons(df, [256, 1024]).set_index(["comparison", "stage", "length"])
    same = comp.loc[("LongRoPE2 vs none", "training-free", 1024)]
    assert (same["diff"], same["diff_lo"], same["diff_hi"], same["verdict"]) == (0.0, 0.0, 0.0, "no difference")
    assert comp.loc[("LongRoPE2 vs yarn", "training-free", 1024), "verdict"] == "higher"
    ret = ruler_tables.retention(df, 256).set_index(["stage", "method"])
    assert ret.loc[("after", "longrope2"), "retention"] == 100.0 and ret.loc[("training-free", "yarn"), "retention"] == 0.0
    pk = ruler_tables.passkey(df).set_index(["stage", "method", "length"]).loc[("training-free", "none", 1024)]
    assert (pk["score"], pk["n"]) == (90.0, 20) and pk["lo"] == pytest.approx(69.9, abs=0.1)
    grid = ruler_tables.niah_grid(df)
    assert set(grid["depth_pct"]) == {0, 50, 100} and set(grid["n"]) == {3}
    text = ruler_tables.markdown(t2.reset_index(), ruler_tables.per_task(df, cells), ruler_tables.comparisons(df, [256, 1024]),
                                 ruler_tables.retention(df, 256), ruler_tables.passkey(df), ["test machine"], 85.6, 1024)
    assert "256: 1/2 tasks" in text and "75.0 [" in text and "not run: vt at 256: too short" in text


def test_tables_stage_writes_every_artifact(tmp_path):
    good = {"niah_single_1": [1.0, 0.0] * 5, "niah_depth": [1.0, 0.0, 1.0], "passkey": [1.0, 1.0]}
    paths = [fake_run(tmp_path, m, "training-free", good) for m in ("none", "longrope2")]
    out = tmp_path / "tables"
    run_cli("ruler-tables", "--config", REPO / "config/config.yaml", "--scores", *paths, "--out", out)
    names = {p.name for p in out.iterdir()}
    assert {"ruler.csv", "ruler.md", "ruler.tex", "ruler_tasks.csv", "comparisons.csv", "retention.csv",
            "niah_grid.csv", "passkey.csv", "ruler_vs_length.png", "niah_heatmaps.png", "manifest.json"} <= names
    table = pd.read_csv(out / "ruler.csv")
    assert set(table.loc[table["length"] != "avg", "n"]) == {10} and set(table.loc[table["length"] == "avg", "n"]) == {20}


def test_a_killed_run_resumes_from_its_response_cache(data_dirs, tiny_llama, tmp_path):
    """Responses are stored batch by batch: a rerun decodes only what the first run did not reach."""
    from test_lm_eval import ScriptedLM

    model, tok = tiny_llama
    infos = ruler_eval.read_tasks([str(d) for d in data_dirs])
    docs = [json.loads(line) for d in data_dirs for line in (d / "samples.jsonl").read_text().splitlines()]
    answers = {d["input"] + d["gen_prefix"]: " " + " ".join(d["outputs"]) for d in docs}

    class Counting(ScriptedLM):
        decoded = 0

        def _generate(self, prompts, max_new_tokens, untils):
            Counting.decoded += len(prompts)
            return super()._generate(prompts, max_new_tokens, untils)

    cache = str(tmp_path / "responses-x")
    first_half = [i for i in infos if i["task"] in ("niah_single_2", "vt")]  # the run "killed" after these
    ruler_eval.score(Counting(model, tok, answers, max_length=1024), first_half, use_cache=cache)
    done = Counting.decoded
    full, _ = ruler_eval.score(Counting(model, tok, answers, max_length=1024), infos, use_cache=cache)
    fresh, _ = ruler_eval.score(ScriptedLM(model, tok, answers, max_length=1024), infos)
    assert full == fresh
    runnable = sum(i["samples"] for i in infos)
    assert Counting.decoded - done == runnable - sum(i["samples"] for i in first_half)


def test_suite_without_its_data_stops_in_one_line_before_loading_the_model(tiny_llama, tmp_path):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"evaluation:\n  mmlu: {{data_dir: {tmp_path / 'no_mirror'}}}\n")
    proc = run_cli("suite", "--config", REPO / "config/config.yaml", bad, "--suite", "mmlu", "--model", tmp_path / "model",
                   "--max-length", 128, "--label", "none", "--out", tmp_path / "out", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "evaluation.mmlu.data_dir: " in proc.stderr and "cais/mmlu" in proc.stderr
    assert not (tmp_path / "out").exists()
