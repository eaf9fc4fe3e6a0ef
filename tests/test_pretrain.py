"""Scale-model pretraining on the micro config: HF folder output, learning curve, kill-and-resume."""

import json
import signal
import subprocess
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import BIN, REPO, run_cli

MICRO = REPO / "tests" / "micro.yaml"


@pytest.fixture(scope="module")
def micro_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro") / "corpus"
    run_cli("corpus", "--config", REPO / "config/config.yaml", MICRO, "--out", out)
    return out


def longer(tmp_path, steps, **pretrain):
    p = tmp_path / f"longer-{len(pretrain)}.yaml"
    p.write_text(yaml.safe_dump({"pretrain": {"steps": steps, "checkpoint_every": 4, "eval_every": 100, **pretrain}}))
    return [REPO / "config/config.yaml", MICRO, p]


def killed_after_a_checkpoint(cfg, corpus, out, ckdir):
    """Start a pretraining run and SIGKILL it once it has written a checkpoint."""
    args = [str(BIN / "longrope2"), "pretrain", "--config", *map(str, cfg), "--corpus", str(corpus),
            "--out", str(out), "--checkpoint-dir", str(ckdir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(ckdir.glob("step-*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()  # a killed stage leaves no artifact


def same_weights(a, b):
    a, b = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_writes_loadable_model_and_curve(tmp_path, micro_corpus):
    out = tmp_path / "base_model"
    run_cli("pretrain", "--config", REPO / "config/config.yaml", MICRO, "--corpus", micro_corpus, "--out", out,
            "--checkpoint-dir", tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.model_type == "llama" and model.config.head_dim == 16
    assert model.config.rope_parameters["rope_theta"] == 10000.0 and model.config.max_position_embeddings == 256
    assert len(tok) == model.config.vocab_size
    curve = (out / "pretrain_curve.csv").read_text().splitlines()
    # RULER's needle prompts do not fit the micro model's 256 tokens with its 512-token vocabulary: the
    # curve then has no RULER columns (test_ruler_curve_set_at_l0 shows them at 512)
    assert curve[0] == "step,wall_s,tokens,acc_single,acc_multi,ppl_L0" and curve[-1].startswith("12,")
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["steps"] == 12 and summary["tokens"] > 0
    assert summary["curve_samples"] == {"needles": 4, "ruler_per_task": 1}
    # needle-to-question distances seen in pretraining, next to the corpus's repeated-identifier distances
    rows = (out / "distances.csv").read_text().splitlines()
    assert rows[0] == "from,to,corpus,pretraining" and (out / "distances.png").stat().st_size > 0
    shares = [list(map(float, r.split(",")[2:])) for r in rows[1:]]
    assert abs(sum(c for c, _ in shares) - 1) < 1e-3 and abs(sum(p for _, p in shares) - 1) < 1e-3
    d = summary["distances"]
    # one question-to-needle distance per row: 12 batches of 4 rows, less the one batch (seeded) drawn from
    # the recall option, whose rows place no needle
    assert d["pretraining"]["n"] == 11 * 4 and d["corpus"]["n"] > 1000 and d["corpus"]["median"] < 256
    assert not list((tmp_path / "ckpt").glob("step-*.pt"))  # removed after a completed run


# a warm-up that never meets its gate and outlasts the kill's delay: the kill lands inside it
LONG_WARMUP = {"kind": "copy", "span": "varied", "length": 32, "until_loss": 1e-9, "window": 3, "max_steps": 100}
QUICK_COPY = {"kind": "copy", "length": 32, "until_loss": 100.0, "window": 3, "max_steps": 6}  # gate met at step 3
LONG_RECALL = {"kind": "recall", "length": 33, "alphabet": 16, "until_loss": 1e-9, "window": 3, "max_steps": 100}


@pytest.mark.parametrize("pretrain, resumed", [
    # without a warm-up: micro.yaml's (4 steps) writes a checkpoint at its end, where the kill could land
    ({"warmup": None}, "resuming from step"),
    ({"warmup": LONG_WARMUP}, "resuming in the warm-up"),
    ({"warmup": [QUICK_COPY, LONG_RECALL]}, "(phase 2 of 2)"),  # the kill lands in the second phase
])
def test_kill_and_resume_ends_with_the_same_weights(tmp_path, micro_corpus, pretrain, resumed):
    cfg = longer(tmp_path, 40, **pretrain)
    ref = tmp_path / "ref"
    run_cli("pretrain", "--config", *cfg, "--corpus", micro_corpus, "--out", ref, "--checkpoint-dir", tmp_path / "c1")
    ckdir = tmp_path / "c2"
    killed_after_a_checkpoint(cfg, micro_corpus, tmp_path / "resumed", ckdir)
    second = run_cli("pretrain", "--config", *cfg, "--corpus", micro_corpus, "--out", tmp_path / "resumed",
                     "--checkpoint-dir", ckdir)
    assert resumed in second.stdout + second.stderr
    assert same_weights(ref, tmp_path / "resumed")
    manifest = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    first_wall = json.loads((ref / "manifest.json").read_text())["wall_time_s"]
    assert manifest["wall_time_s"] > 0.5 * first_wall  # counts the killed attempt's training too


def test_changed_config_never_resumes_an_old_checkpoint(tmp_path, micro_corpus):
    """Kill, then change the learning rate: the old checkpoint is set aside and the run starts fresh."""
    ckdir = tmp_path / "ck"
    killed_after_a_checkpoint(longer(tmp_path, 40), micro_corpus, tmp_path / "out", ckdir)
    changed = longer(tmp_path, 40, lr=0.003)
    rerun = run_cli("pretrain", "--config", *changed, "--corpus", micro_corpus, "--out", tmp_path / "out",
                    "--checkpoint-dir", ckdir)
    log = rerun.stdout + rerun.stderr
    assert "resuming" not in log and "another config" in log
    assert list((ckdir / "stale").glob("step-*.pt"))
    fresh = tmp_path / "fresh"
    run_cli("pretrain", "--config", *changed, "--corpus", micro_corpus, "--out", fresh, "--checkpoint-dir", tmp_path / "c3")
    assert same_weights(fresh, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["pretrain"]["lr"] == 0.003


def test_curriculum_option_that_cannot_fit_fails_before_training(tmp_path, micro_corpus):
    """Four needles with four questions need ~290 tokens: refused up front, not at the step it starts."""
    cfg = longer(tmp_path, 40, curriculum=[{"from_step": 0, "length": 192, "needles": 1},
                                           {"from_step": 30, "length": 160, "needles": 4, "queries": 4}])
    proc = run_cli("pretrain", "--config", *cfg, "--corpus", micro_corpus, "--out", tmp_path / "out",
                   "--checkpoint-dir", tmp_path / "ck", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert "pretrain.curriculum: option" in lines[0] and "'length': 160" in lines[0] and "cannot hold" in lines[0]
    assert not (tmp_path / "out").exists() and not list((tmp_path / "ck").glob("step-*.pt"))


def test_copy_batch_labels_only_the_second_copy(micro_corpus):
    from transformers import AutoTokenizer

    from longrope2.corpus import TokenizedCorpus
    from longrope2.needles import NeedleBuilder
    from longrope2.stages.pretrain import copy_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    ids, lab = copy_batch(NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=1), 129, 3)
    assert ids.shape == lab.shape == (3, 129) and (ids[:, 0] == tok.bos_token_id).all()
    torch.testing.assert_close(ids[:, 1:65], ids[:, 65:])
    assert (lab[:, :66] == -100).all() and torch.equal(lab[:, 66:], ids[:, 66:])


def test_varied_copy_spans_put_the_copy_at_different_distances(micro_corpus):
    """span varied: each row copies 32-64 tokens right after themselves, so the copy's offset differs
    between rows (no single positional head solves it); labels only on the copy, padding after it."""
    from transformers import AutoTokenizer

    from longrope2.corpus import TokenizedCorpus
    from longrope2.needles import NeedleBuilder
    from longrope2.stages.pretrain import copy_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    ids, lab = copy_batch(NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=1), 129, 8, "varied",
                          tok.pad_token_id)
    assert ids.shape == lab.shape == (8, 129) and (ids[:, 0] == tok.bos_token_id).all()
    spans = []
    for row, labels in zip(ids, lab):
        k = int((labels != -100).sum()) + 1
        assert 32 <= k <= 64
        torch.testing.assert_close(row[1 : 1 + k], row[1 + k : 1 + 2 * k])
        assert torch.equal(labels[2 + k : 1 + 2 * k], row[2 + k : 1 + 2 * k]) and (labels[: 2 + k] == -100).all()
        assert (row[1 + 2 * k :] == tok.pad_token_id).all()
        spans.append(k)
    assert len(set(spans)) > 4


def test_recall_batch_labels_each_queried_keys_value(micro_corpus):
    """Associative recall: every labelled token is the value that followed its query key in the context."""
    from transformers import AutoTokenizer
    from longrope2.corpus import TokenizedCorpus
    from longrope2.needles import NeedleBuilder
    from longrope2.stages.pretrain import recall_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    ids, lab = recall_batch(NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=1), 129, 3)
    pairs = 32
    assert ids.shape == (3, 1 + 4 * pairs) and int((lab != -100).sum()) == 3 * pairs
    for row, labels in zip(ids.tolist(), lab.tolist()):
        context = dict(zip(row[1 : 1 + 2 * pairs : 2], row[2 : 2 + 2 * pairs : 2]))
        assert len(context) == pairs  # distinct keys: the query decides the answer
        queries = row[1 + 2 * pairs :: 2]
        assert sorted(queries) == sorted(context) and queries != list(context)  # every key, in another order
        assert [labels[j] for j in range(2 + 2 * pairs, len(row), 2)] == [context[k] for k in queries]
    small, _ = recall_batch(NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=1), 33, 2, alphabet=16)
    assert small.shape == (2, 33) and int(small[:, 1:].min()) >= 4 and int(small[:, 1:].max()) < 4 + 16


@pytest.mark.parametrize("placement", ["uniform", "start", "corpus"])
def test_needle_batch_ends_with_a_labelled_eos(micro_corpus, placement):
    """Rows are exactly the option's length; the answer is followed by EOS, labelled, so generation stops
    after it; "start" puts the needle right after the preamble."""
    from transformers import AutoTokenizer

    from longrope2 import distances as dist
    from longrope2.corpus import TokenizedCorpus
    from longrope2.needles import NeedleBuilder
    from longrope2.stages.pretrain import make_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    builder = NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=1)
    sampler = dist.DistanceSampler.from_distances(dist.repeat_distances(builder.corpus, tok), 256)
    seen = []
    ids, lab = make_batch(builder, {"length": 256, "placement": placement}, 4, tok.pad_token_id, sampler, seen)
    assert ids.shape == lab.shape == (4, 256) and len(seen) == 4
    assert (ids[:, -1] == tok.eos_token_id).all() and (lab[:, -1] == tok.eos_token_id).all()
    answer = lab[:, :-1] != -100
    assert answer.any(dim=1).all() and not answer[:, :200].any()  # the answer sits right before EOS
    if placement == "start":
        needle = builder.encode(builder.t["needle"].split(" magic")[0])  # "One of the special"
        at = 1 + len(builder.preamble)
        assert all(ids[i, at : at + len(needle)].tolist() == needle for i in range(4))


def test_ruler_batch_is_fresh_ruler_format_with_a_labelled_eos(micro_corpus):
    """kind: ruler draws RULER's own wording and keys from the training split, never the evaluation's
    samples; the answer and its EOS are the only labels; corpus placement records needle distances."""
    import random

    from transformers import AutoTokenizer

    from longrope2 import distances as dist
    from longrope2.corpus import TokenizedCorpus
    from longrope2.evaluation import ruler
    from longrope2.stages.pretrain import RulerSource, make_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    train = TokenizedCorpus(micro_corpus, "train")
    source = RulerSource.from_corpus(train, tok, random.Random(3))
    sampler = dist.DistanceSampler.from_distances(dist.repeat_distances(train, tok), 256)
    opt = {"kind": "ruler", "length": 512, "tasks": ["niah_single_1", "niah_single_2", "passkey"], "placement": "corpus"}
    seen = []
    ids, lab = make_batch(None, opt, 6, tok.pad_token_id, sampler, seen, source)
    assert ids.shape[0] == 6 and ids.shape[1] <= 512 and 0 < len(seen) <= 6
    evaluation = {s["outputs"][0] for t in opt["tasks"] for s in ruler.generate(t, 512, 6, tok, source.text, 7)}
    for row, labels in zip(ids, lab):
        n = int((row != tok.pad_token_id).sum())
        answer = labels[labels != -100]
        assert answer[-1] == tok.eos_token_id and labels[n - 1] == tok.eos_token_id
        assert torch.equal(row[n - len(answer) : n], answer)  # the labels are the sequence's last tokens
        text = tok.decode(row[: n - len(answer)].tolist())
        assert text.startswith(tok.bos_token) and ("special magic" in text or "pass key" in text)
        value = tok.decode(answer[:-1].tolist()).strip()
        assert value.isdigit() and value not in evaluation
    assert torch.equal(make_batch(None, opt, 6, tok.pad_token_id, sampler, [], RulerSource(source.text, tok, random.Random(3)))[0], ids)


def test_multi_token_recall_keys_need_every_token_and_a_colon(micro_corpus):
    """Keys of 3 tokens from a 4-token alphabet, each followed by ':' and its value: keys are distinct as
    triples but share tokens (no single position tells them apart), and each query's label is its value."""
    from transformers import AutoTokenizer
    from longrope2.corpus import TokenizedCorpus
    from longrope2.needles import NeedleBuilder
    from longrope2.stages.pretrain import recall_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    colon = tok.convert_tokens_to_ids(":")
    ids, lab = recall_batch(NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=1), 129, 2, 4, key_tokens=3)
    pairs, unit = 128 // 10, 5
    assert ids.shape == (2, 1 + 2 * unit * pairs) and int((lab != -100).sum()) == 2 * pairs
    for row, labels in zip(ids.tolist(), lab.tolist()):
        units = [row[1 + unit * j : 1 + unit * (j + 1)] for j in range(2 * pairs)]
        assert all(u[3] == colon for u in units)
        context = {tuple(u[:3]): u[4] for u in units[:pairs]}
        assert len(context) == pairs and all(4 <= t < 8 for key in context for t in key)
        assert len({key[-1] for key in context}) < pairs  # the last token alone does not tell the keys apart
        for j, u in enumerate(units[pairs:]):
            assert context[tuple(u[:3])] == u[4] == labels[1 + unit * (pairs + j) + 4]
        assert sum(t != -100 for t in labels) == pairs
    sep = tok(" is:", add_special_tokens=False)["input_ids"]  # as a needle's "for apple is: 1234"
    ids, lab = recall_batch(NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=1), 129, 2, 4, 3, " is:")
    unit = 3 + len(sep) + 1
    row = ids[0].tolist()
    assert all(row[1 + unit * j + 3 : 1 + unit * j + 3 + len(sep)] == sep for j in range(2 * (128 // (2 * unit))))


def test_recall_query_text_sits_between_each_queried_key_and_its_value(micro_corpus):
    """``query``: the pairs keep their separator; each query is key, the query text, value (labelled), so the
    answer position lies as far from the key as in a needle's question."""
    from transformers import AutoTokenizer
    from longrope2.corpus import TokenizedCorpus
    from longrope2.needles import NeedleBuilder
    from longrope2.stages.pretrain import recall_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    sep = tok(" is:", add_special_tokens=False)["input_ids"]
    ask = tok(" mentioned in the provided text is", add_special_tokens=False)["input_ids"]
    ids, lab = recall_batch(NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=1), 257, 2, 4, 3, " is:",
                            " mentioned in the provided text is")
    unit, q_unit = 3 + len(sep) + 1, 3 + len(ask) + 1
    pairs = 256 // (unit + q_unit)
    assert ids.shape == (2, 1 + (unit + q_unit) * pairs) and int((lab != -100).sum()) == 2 * pairs
    for row, labels in zip(ids.tolist(), lab.tolist()):
        context = {}
        for j in range(pairs):
            u = row[1 + unit * j : 1 + unit * (j + 1)]
            assert u[3:-1] == sep
            context[tuple(u[:3])] = u[-1]
        for j in range(pairs):
            at = 1 + unit * pairs + q_unit * j
            u = row[at : at + q_unit]
            assert u[3:-1] == ask and context[tuple(u[:3])] == u[-1] == labels[at + q_unit - 1]


def test_recall_alphabet_smaller_than_its_keys_fails_before_training(tmp_path, micro_corpus):
    cfg = longer(tmp_path, 4, curriculum=[{"from_step": 0, "kind": "recall", "length": 65, "alphabet": 8}])
    proc = run_cli("pretrain", "--config", *cfg, "--corpus", micro_corpus, "--out", tmp_path / "out", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "16 <= alphabet <=" in lines[0]
    assert not (tmp_path / "out").exists()


def test_recall_word_keys_that_cannot_fit_fail_before_training(tmp_path, micro_corpus):
    cfg = longer(tmp_path, 4, curriculum=[{"from_step": 0, "kind": "recall", "length": 24, "keys": "words",
                                           "separator": " is:", "query": " mentioned in the provided text is"}])
    proc = run_cli("pretrain", "--config", *cfg, "--corpus", micro_corpus, "--out", tmp_path / "out", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "pretrain.curriculum" in lines[0] and "1 to 138 pairs" in lines[0]
    assert not (tmp_path / "out").exists()


def test_ruler_option_that_cannot_fit_fails_before_training(tmp_path, micro_corpus):
    cfg = longer(tmp_path, 40, curriculum=[{"from_step": 0, "length": 192},
                                           {"from_step": 30, "kind": "ruler", "length": 256, "tasks": ["vt"]}])
    proc = run_cli("pretrain", "--config", *cfg, "--corpus", micro_corpus, "--out", tmp_path / "out",
                   "--checkpoint-dir", tmp_path / "ck", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert "pretrain.curriculum: RULER task vt at 256 tokens" in lines[0] and "use lengths of at least" in lines[0]
    assert not (tmp_path / "out").exists()


def test_ruler_curve_set_at_l0(micro_corpus):
    """The curve's RULER columns: niah_single_1/2/3 and multikey_1 prompts at L0 from the validation split,
    each answer labelled right after its prompt."""
    from transformers import AutoTokenizer

    from longrope2.stages.pretrain import CURVE_TASKS, ruler_curve_set

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    sets = ruler_curve_set(micro_corpus, tok, 512, 3)
    assert tuple(sets) == CURVE_TASKS
    for ids, lab in sets.values():
        assert ids.shape[0] == 3 and ids.shape[1] <= 512
        assert ((lab != -100).sum(1) >= 2).all()


@pytest.mark.parametrize("gate, steps, reached", [(100.0, 3, True), (1e-9, 6, False)])
def test_warmup_runs_until_its_loss_gate_then_the_curriculum(tmp_path, micro_corpus, gate, steps, reached):
    """The warm-up stops once the mean answer loss of its last `window` steps is under the gate (here at
    once: 3 steps) or at max_steps (the gate never reached); the curriculum's steps follow in full."""
    warm = {"kind": "copy", "length": 32, "until_loss": gate, "window": 3, "max_steps": 6}
    out = tmp_path / "out"
    run_cli("pretrain", "--config", *longer(tmp_path, 8, warmup=warm), "--corpus", micro_corpus, "--out", out,
            "--checkpoint-dir", tmp_path / "ck")
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["warmup"]["steps"] == steps and summary["warmup"]["reached"] is reached
    # the warm-up's rows (31 tokens) counted next to the curriculum's (6 steps of 192 tokens, 2 of 256; batch 4)
    assert summary["steps"] == 8 and summary["tokens"] == steps * 4 * 31 + 4 * (6 * 192 + 2 * 256)
    curve = (out / "pretrain_curve.csv").read_text().splitlines()
    assert curve[1].startswith("0,") and curve[-1].startswith("8,")  # the curve counts curriculum steps


def test_warmup_phases_run_in_order_each_until_its_own_gate(tmp_path, micro_corpus):
    """A list of phases: copying until its gate (met at once: 3 steps), then associative recall until its
    own (never met: max_steps 5); pretrain.json records each phase, and every row is counted."""
    recall = {"kind": "recall", "length": 33, "alphabet": 16, "until_loss": 1e-9, "window": 3, "max_steps": 5}
    out = tmp_path / "out"
    run_cli("pretrain", "--config", *longer(tmp_path, 8, warmup=[QUICK_COPY, recall]), "--corpus", micro_corpus,
            "--out", out, "--checkpoint-dir", tmp_path / "ck")
    summary = json.loads((out / "pretrain.json").read_text())
    assert [(w["kind"], w["steps"], w["reached"]) for w in summary["warmup"]] == [("copy", 3, True), ("recall", 5, False)]
    assert summary["warmup"][1]["answer_loss"] > 0.1  # 5 steps do not teach recall
    # copy rows 31 tokens, recall rows 33 (BOS + 8 pairs + 8 queries), then the curriculum's 8 steps (batch 4)
    assert summary["tokens"] == 3 * 4 * 31 + 5 * 4 * 33 + 4 * (6 * 192 + 2 * 256)


def test_recall_with_word_keys_uses_the_needles_keys_and_labels_each_query(micro_corpus):
    """keys: words -- each key is one of the needles' key words (1-5 sub-word pieces), then ' is:' and its
    value; the queries ask with the needle question's words, every query's value is labelled where it
    stands, and the rows (laid out for the longest word) are padded at the end."""
    from transformers import AutoTokenizer
    from longrope2.corpus import TokenizedCorpus
    from longrope2.needles import NeedleBuilder
    from longrope2.stages.pretrain import recall_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    builder = NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=3)
    words = {tuple(builder.encode(" " + w)): w for w in builder.keys}
    sep, ask = builder.encode(" is:"), builder.encode(" mentioned in the provided text is")
    ids, lab = recall_batch(builder, 241, 3, key_tokens=3, separator=" is:",
                            query=" mentioned in the provided text is", keys="words", pad_id=tok.pad_token_id)
    assert ids.shape[1] <= 241 and len({len(k) for k in words}) > 1
    for row, labels in zip(ids.tolist(), lab.tolist()):
        row = row[: max(i for i, t in enumerate(row) if t != tok.pad_token_id) + 1]  # padding only at the end
        text, at, context, asked = row[1:], 0, {}, []
        while at < len(text):  # read pairs, then queries, greedily by the known word keys
            follows = lambda k, gap: text[at + len(k) : at + len(k) + len(gap)] == gap  # noqa: E731
            key = next(k for k in sorted(words, key=len, reverse=True)
                       if tuple(text[at : at + len(k)]) == k and (follows(k, sep) or follows(k, ask)))
            gap = sep if follows(key, sep) and key not in context else ask
            value_at = at + len(key) + len(gap)
            if gap is sep:
                context[key] = text[value_at]
            else:
                asked.append(key)
                assert labels[1 + value_at] == text[value_at] == context[key]
            at = value_at + 1
        assert sorted(asked) == sorted(context) and len(context) >= 2
        assert sum(t != -100 for t in labels) == len(asked)


@pytest.mark.parametrize("values, pattern", [
    ("digits", r"\d{7}"),
    ("uuid", r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"),
])
def test_recall_value_kinds_label_every_token_of_the_value(micro_corpus, values, pattern):
    """values: digits -- a needle's value (" " and 7 digits); uuid -- a UUID4 as RULER's niah_single_3 hides
    one (its own generator). A query's every value token is labelled, and the value is the one its key's pair
    holds; rows are laid out for the longest value (37 tokens for a UUID) and padded at the end."""
    import re
    from transformers import AutoTokenizer
    from longrope2.corpus import TokenizedCorpus
    from longrope2.needles import NeedleBuilder
    from longrope2.stages.pretrain import recall_batch

    tok = AutoTokenizer.from_pretrained(micro_corpus / "tokenizer")
    builder = NeedleBuilder(TokenizedCorpus(micro_corpus, "train"), tok, seed=5)
    ids, lab = recall_batch(builder, 300, 3, separator=" is:", query=" mentioned in the provided text is",
                            keys="words", pad_id=tok.pad_token_id, values=values)
    for row, labels in zip(ids, lab):
        text = tok.decode(row[row != tok.pad_token_id][1:])
        context = dict(re.findall(rf" (\w+) is: ({pattern})", text))
        asked = re.findall(rf" (\w+) mentioned in the provided text is ({pattern})", text)
        assert len(context) >= 2 and sorted(k for k, _ in asked) == sorted(context)
        assert all(context[k] == v for k, v in asked)
        assert tok.decode(row[labels != -100]) == "".join(" " + v for _, v in asked)
    if values == "uuid":
        assert (ids == tok.pad_token_id).any()  # UUIDs tokenize to fewer than 37 tokens
