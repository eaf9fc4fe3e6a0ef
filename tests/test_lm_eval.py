"""lm-eval plumbing: NVIDIA's RULER metrics, local task configs through simple_evaluate, LongContextLM decoding."""

import json

import numpy as np
import pytest
import torch
from lm_eval.api.instance import Instance
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from longrope2 import models, rope
from longrope2.errors import LongRoPE2Error
from longrope2.evaluation import harness
from longrope2.evaluation.lm import LongContextLM
from longrope2.generation import batch_class, greedy_generate, switch_length

from conftest import word_tokenizer

L0, TARGET, VOCAB = 32, 128, 97


# --------------------------------------------------------------------------------------------------
# Metrics: NVIDIA/RULER scripts/eval (constants.py, evaluate.py), transcribed as the reference
# --------------------------------------------------------------------------------------------------


def nvidia_postprocess(predict_str):
    import re

    predict_str = predict_str.strip()
    np_pattern = re.compile(r'[\x00-\x1f]')
    return np_pattern.sub('\n', predict_str).strip()


def nvidia_all(preds, refs):
    return round(sum([sum([1.0 if r.lower() in pred.lower() else 0.0 for r in ref]) / len(ref)
                      for pred, ref in zip(preds, refs)]) / len(preds) * 100, 2)


def nvidia_part(preds, refs):
    return round(sum([max([1.0 if r.lower() in pred.lower() else 0.0 for r in ref])
                      for pred, ref in zip(preds, refs)]) / len(preds) * 100, 2)


CASES = [  # (prediction, references)
    (" 1234567.", ["1234567"]),
    ("The number is 7654321", ["1234567"]),
    ("VAR_A, var_b and so on", ["var_a", "VAR_B", "VAR_C", "VAR_D", "VAR_E"]),  # 2 of 5, any case
    ("Paris, France", ["paris", "Lyon"]),
    ("", ["x"]),
    ("\x00\x07 answer\tline \x1f", ["answer\nline"]),  # control characters become newlines, then strip
    ("apple banana", ["APPLE", "banana", "cherry"]),
]


def test_metrics_match_nvidia_definitions():
    for pred, refs in CASES:
        assert harness.postprocess_pred(pred) == nvidia_postprocess(pred)
        p = nvidia_postprocess(pred)
        assert round(harness.string_match_all(pred, refs) * 100, 2) == nvidia_all([p], [refs])  # NVIDIA rounds
        assert round(harness.string_match_part(pred, refs) * 100, 2) == nvidia_part([p], [refs])
    preds, refs = [nvidia_postprocess(p) for p, _ in CASES], [r for _, r in CASES]
    mean_all = np.mean([harness.string_match_all(p, r) for p, r in CASES]) * 100
    assert round(mean_all, 2) == nvidia_all(preds, refs)
    assert round(np.mean([harness.string_match_part(p, r) for p, r in CASES]) * 100, 2) == nvidia_part(preds, refs)


def test_metric_values():
    vt = ["VAR_A", "VAR_B", "VAR_C", "VAR_D", "VAR_E"]
    assert harness.string_match_all("var_a var_b", vt) == pytest.approx(0.4)
    assert harness.string_match_part("var_a var_b", vt) == 1.0  # lm-eval's partial-credit variant gives 0.4
    assert harness.string_match_all("VAR_A VAR_B VAR_C VAR_D VAR_E", vt) == 1.0
    assert harness.string_match_part("nothing", vt) == harness.string_match_all("nothing", vt) == 0.0
    assert harness.string_match_all("ABC", "abc") == 1.0  # one reference as a string
    assert harness.string_match_all(" \x00\n", [""]) == 1.0  # NVIDIA's: an empty reference is always found
    with pytest.raises(LongRoPE2Error, match="outputs is empty"):
        harness.string_match_all("x", [])
    assert harness.process_results({"metric": "part", "outputs": ["a", "zz"]}, ["A"]) == {"score": 1.0}
    assert harness.process_results({"metric": "all", "outputs": ["a", "zz"]}, ["A"]) == {"score": 0.5}
    with pytest.raises(LongRoPE2Error, match="metric must be one of"):
        harness.process_results({"metric": "f1", "outputs": ["a"]}, ["a"])


# --------------------------------------------------------------------------------------------------
# Local RULER tasks through the full lm_eval.simple_evaluate path
# --------------------------------------------------------------------------------------------------

HAYSTACK = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def sample(index, task, length, input, gen_prefix, outputs, metric, max_new=64, depth=None):
    return {"index": index, "task": task, "length": length, "input": input, "gen_prefix": gen_prefix,
            "outputs": outputs, "max_new_tokens": max_new, "metric": metric,
            "prompt_tokens": 1 + len((input + gen_prefix).encode()),  # BOS + one token per byte (char_tokenizer)
            "depth": depth}


def ruler_samples():
    niah = [sample(i, "niah_single_1", 4096,
                   HAYSTACK * (1 + i) + f"One of the special magic numbers for {key} is: {num}. " + HAYSTACK
                   + f"\nWhat is the special magic number for {key} mentioned in the provided text?",
                   f" The special magic number for {key} mentioned in the provided text is", [num], "all", depth=d)
            for i, (key, num, d) in enumerate([("apple", "1234567", 0.25), ("pear", "7654321", 0.5), ("fig", "5550123", 0.9)])]
    qa = [sample(0, "qa_1", 4096, "Document 1: The Eiffel tower is in Paris, France.\nQuestion: Where is the Eiffel tower?",
                 " Answer:", ["Paris", "Paris, France"], "part"),
          sample(1, "qa_1", 4096, "Document 1: Water boils at 100 degrees Celsius at sea level.\nQuestion: At what "
                 "temperature does water boil?", " Answer:", ["100 degrees Celsius", "100 °C"], "part")]
    vt = [sample(0, "vt", 4096, "VAR QPE = 16490 " + HAYSTACK + "VAR SGF = VAR QPE " + HAYSTACK + "VAR ZIK = VAR SGF "
                 "VAR HFN = VAR ZIK VAR LKA = VAR HFN\nQuestion: Find all variables that are assigned the value 16490.",
                 " Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
                 "assigned the value 16490, they are:", ["QPE", "SGF", "ZIK", "HFN", "LKA"], "all", max_new=48)]
    return {"niah_single_1": niah, "qa_1": qa, "vt": vt}


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def char_tokenizer():
    """Byte-level tokens, one per byte, no merges: any text round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(tok_models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


def tiny_llama(vocab, **kw):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=32, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      initializer_range=0.1, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **kw)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


class ScriptedLM(LongContextLM):
    """LongContextLM whose decoding step answers from a table keyed by the exact prompt text.

    Everything else (tokenization, length checks, batching, eos and stop handling, lm-eval's request and
    scoring path) is LongContextLM's own; a prompt lm-eval built differently from input + gen_prefix is a
    KeyError."""

    def __init__(self, model, tok, answers, **kw):
        super().__init__(model, tok, **kw)
        self.answers = answers

    def _generate(self, prompts, max_new_tokens, untils):
        assert all(p[0] == self.tokenizer.bos_token_id for p in prompts)
        rows = [self.tokenizer.encode(self.answers[self.tokenizer.decode(p[1:])], add_special_tokens=False) for p in prompts]
        return [(r + [self.eot_token_id] + r)[:max_new_tokens] for r in rows]  # text after eos must be dropped


@pytest.fixture(scope="module")
def ruler_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ruler")
    configs, docs = [], {}
    for task, ss in ruler_samples().items():
        path = write_jsonl(root / f"{task}-4096.jsonl", ss)
        configs.append(harness.task_config(task, 4096, path, cache_dir=root / "datasets"))
        docs[configs[-1]["task"]] = ss
    return configs, docs


def test_task_config(ruler_tasks):
    configs, _ = ruler_tasks
    assert [c["task"] for c in configs] == ["ruler_niah_single_1_4096", "ruler_qa_1_4096", "ruler_vt_4096"]
    niah, _, vt = configs
    assert niah["dataset_path"] == "json" and niah["dataset_kwargs"]["data_files"]["test"].endswith("niah_single_1-4096.jsonl")
    assert niah["generation_kwargs"] == {"do_sample": False, "temperature": 0.0, "max_gen_toks": 64, "until": []}
    assert vt["generation_kwargs"]["max_gen_toks"] == 48
    assert niah["process_results"] is harness.process_results and niah["output_type"] == "generate_until"


def test_oracle_scores_one_and_silence_zero(ruler_tasks):
    configs, docs = ruler_tasks
    tok = char_tokenizer()
    model = tiny_llama(len(tok), max_position_embeddings=4096)
    answers = {d["input"] + d["gen_prefix"]: " " + ", ".join(d["outputs"]) + "." for ds in docs.values() for d in ds}
    oracle = harness.run(ScriptedLM(model, tok, answers, max_length=4096, batch_size=2), configs)
    assert set(oracle["tasks"]) == set(docs)
    for name, ds in docs.items():
        assert oracle["tasks"][name]["score"] == 1.0 and oracle["tasks"][name]["n"] == len(ds)
        recs = oracle["samples"][name]
        assert [r["index"] for r in recs] == [d["index"] for d in ds]
        for rec, doc in zip(recs, ds):
            assert rec["prediction"] == answers[doc["input"] + doc["gen_prefix"]]  # cut at eos
            assert rec["references"] == doc["outputs"] and rec["score"] == 1.0 and rec["metric"] == doc["metric"]
            assert "input" not in rec
    silent = harness.run(ScriptedLM(model, tok, dict.fromkeys(answers, ""), max_length=4096), configs, log_samples=False)
    assert {n: t["score"] for n, t in silent["tasks"].items()} == dict.fromkeys(docs, 0.0)
    assert silent["samples"] == {}


def test_partial_answers_score_like_nvidia(ruler_tasks):
    """vt: 2 of 5 variables -> 0.4 (all); qa: the second of two references -> 1.0 (part, not 0.5)."""
    configs, docs = ruler_tasks
    tok = char_tokenizer()
    answers = {}
    for name, ds in docs.items():
        for d in ds:
            answers[d["input"] + d["gen_prefix"]] = {"ruler_vt_4096": " QPE and ZIK", "ruler_qa_1_4096": " 100 °C",
                                                     "ruler_niah_single_1_4096": " 1234567"}[name]
    res = harness.run(ScriptedLM(tiny_llama(len(tok)), tok, answers, max_length=4096), configs)
    assert res["tasks"]["ruler_vt_4096"]["score"] == pytest.approx(0.4)
    assert [r["score"] for r in res["samples"]["ruler_qa_1_4096"]] == [0.0, 1.0]
    assert [r["score"] for r in res["samples"]["ruler_niah_single_1_4096"]] == [1.0, 0.0, 0.0]


def test_bad_ruler_data_is_reported(tmp_path):
    good = ruler_samples()["qa_1"]
    with pytest.raises(LongRoPE2Error, match="does not exist"):
        harness.task_config("qa_1", 4096, tmp_path / "none.jsonl")
    with pytest.raises(LongRoPE2Error, match="lacks outputs"):
        harness.task_config("qa_1", 4096, write_jsonl(tmp_path / "a.jsonl", [{k: v for k, v in good[0].items() if k != "outputs"}]))
    with pytest.raises(LongRoPE2Error, match="is qa_1/4096, expected qa_1/8192"):
        harness.task_config("qa_1", 8192, write_jsonl(tmp_path / "b.jsonl", good))
    with pytest.raises(LongRoPE2Error, match="mixes max_new_tokens"):
        harness.task_config("qa_1", 4096, write_jsonl(tmp_path / "c.jsonl", [good[0], good[1] | {"max_new_tokens": 9}]))


# --------------------------------------------------------------------------------------------------
# LongContextLM on a tiny LongRoPE2 Llama export: equal to full recomputation across L0
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def longrope_llama(tmp_path_factory):
    """A stock HF checkpoint with longrope2 factors (short 1, long != 1), L0 = 32, target 128."""
    model = tiny_llama(VOCAB, max_position_embeddings=L0)
    geom = rope.RopeGeometry.from_hf_config(model.config, original_length=L0)
    d_rcd = max(1, rope.critical_dim(geom) - 1)
    s = TARGET / L0
    scaling = rope.longrope2(geom, TARGET, d_rcd, np.linspace(s, 1.7 * s, geom.n_pairs - d_rcd))
    folder = tmp_path_factory.mktemp("longrope2") / "model"
    tok = word_tokenizer(VOCAB)
    models.save_model(folder, model, tok, scaling)
    stock = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert switch_length(stock) == L0
    return stock, tok


def prompts(lengths, seed=3):
    """Token ids as LongContextLM encodes them: BOS (1), then n - 1 random words."""
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(4, VOCAB, (n - 1,), generator=g).tolist() for n in lengths]


def as_text(ids):
    return " ".join(f"w{i - 4}" for i in ids if i >= 4)


def request(context, max_gen_toks, until=(), task="ruler_niah_single_1_4096", doc_id=0):
    return Instance(request_type="generate_until", doc={}, arguments=(context, {"until": list(until), "max_gen_toks": max_gen_toks}),
                    idx=0, metadata=(task, doc_id, 1))


def reference(model, tok, ids, new_tokens):
    """No cache: a full forward over the whole sequence at every step, argmax; text cut at eos."""
    ids = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(new_tokens):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    new = ids[0, -new_tokens:].tolist()
    new = new[:new.index(2)] if 2 in new else new
    return tok.decode(new, skip_special_tokens=True), len(new)


def spy(lm):
    calls = []
    inner = lm._generate

    def wrapped(batch, max_new, untils):
        calls.append([len(p) for p in batch])
        return inner(batch, max_new, untils)

    lm._generate = wrapped
    return calls


def test_equal_length_batch_equals_full_recompute_across_L0(longrope_llama):
    model, tok = longrope_llama
    lm = LongContextLM(model, tok, max_length=TARGET, batch_size=4)
    calls = spy(lm)
    ps = prompts([28, 28, 28])  # 28 + 12 new: crosses L0 = 32 at the 5th new token
    out = lm.generate_until([request(as_text(p), 12) for p in ps], disable_tqdm=True)
    assert calls == [[28, 28, 28]]  # one batch
    refs = [reference(model, tok, p, 12) for p in ps]
    assert max(n for _, n in refs) > L0 - 28 + 1  # some row decoded past L0 (6th new token on) before any eos
    assert out == [text for text, _ in refs]


def test_mixed_lengths_come_back_in_request_order(longrope_llama):
    model, tok = longrope_llama
    lm = LongContextLM(model, tok, max_length=TARGET, batch_size=2)
    calls = spy(lm)
    lengths = [20, 28, 40, 25, 28, 20, 20]  # 40: already past L0 at the first forward
    ps = prompts(lengths, seed=5)
    out = lm.generate_until([request(as_text(p), 16, doc_id=i) for i, p in enumerate(ps)], disable_tqdm=True)
    assert calls == [[40], [28, 28], [25], [20, 20], [20]]  # longest first, equal lengths batched
    assert out == [reference(model, tok, p, 16)[0] for p in ps]
    assert len(set(out)) > 1


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def plain_llama(request):
    """No factor switch (plain RoPE up to TARGET): prompts of any lengths share a batch. sdpa takes the 4D
    boolean padding mask greedy_generate builds, eager the 2D one transformers turns into its own."""
    model = AutoModelForCausalLM.from_config(tiny_llama(VOCAB, max_position_embeddings=TARGET).config,
                                             attn_implementation=request.param)
    model.load_state_dict(tiny_llama(VOCAB, max_position_embeddings=TARGET).state_dict())
    assert switch_length(model) is None and model.config._attn_implementation == request.param
    return model.eval(), word_tokenizer(VOCAB)


def full_recompute(model, ids, new_tokens):
    """No cache, no padding: a full forward over the row at every step; (new token ids, per-step logits)."""
    ids, logits = torch.tensor([ids]), []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits.append(model(ids).logits[0, -1])
            ids = torch.cat([ids, logits[-1].argmax().view(1, 1)], dim=1)
    return ids[0, -new_tokens:], torch.stack(logits)


def check_padded_batch(model, lengths, new_tokens, seed, eos=None, draft=0):
    """The rows of one left-padded batch, as a list and as ids + attention mask, against each row decoded
    alone (greedy_generate unpadded, no drafting: ids equal, logits within 1e-5) and a cache-less full
    recompute. Returns the batch's new tokens."""
    ps = prompts(lengths, seed=seed)
    width = max(lengths)
    out, scores = greedy_generate(model, ps, new_tokens, eos_token_id=eos, output_scores=True, draft_tokens=draft)
    padded = torch.tensor([[0] * (width - len(p)) + p for p in ps])
    mask = (padded != 0).long()
    for r, p in enumerate(ps):
        mask[r, :width - len(p)] = 0
    again = greedy_generate(model, padded, new_tokens, eos_token_id=eos, attention_mask=mask, draft_tokens=draft)
    assert torch.equal(out, again) and torch.equal(out[:, :width], padded)
    steps = out.shape[1] - width
    logits = torch.stack(scores, dim=1)  # (batch, steps, vocab)
    assert torch.isfinite(logits).all()
    for r, p in enumerate(ps):
        alone, alone_scores = greedy_generate(model, torch.tensor([p]), new_tokens, eos_token_id=eos, output_scores=True)
        n = alone.shape[1] - len(p)  # a row that met eos stops alone; in the batch it then repeats eos
        assert torch.equal(out[r, width:width + n], alone[0, len(p):])
        assert n == steps or (eos is not None and bool((out[r, width + n:] == eos).all()))
        torch.testing.assert_close(logits[r, :n], torch.cat(alone_scores), rtol=0, atol=1e-5)
        ref_ids, ref_logits = full_recompute(model, p, n)
        assert torch.equal(out[r, width:width + n], ref_ids)
        torch.testing.assert_close(logits[r, :n], ref_logits, rtol=0, atol=1e-4)
    return out[:, width:]


@pytest.mark.parametrize("draft", [0, 4])
@pytest.mark.parametrize("lengths, new_tokens", [
    ([45, 40, 40, 37, 33], 12),  # "long": past L0 = 32 from the prefill on
    ([21, 20, 15, 10, 3], 12),  # "short": 21 + 12 - 1 = 32 tokens at the last forward, within L0
])
def test_padded_batch_equals_rows_alone_longrope(longrope_llama, lengths, new_tokens, draft):
    model, _ = longrope_llama
    assert len({batch_class(L0, n, new_tokens) for n in lengths}) == 1
    new = check_padded_batch(model, lengths, new_tokens, seed=21, draft=draft)
    assert len({tuple(row) for row in new.tolist()}) > 1


@pytest.mark.parametrize("draft", [0, 4])
def test_padded_batch_equals_rows_alone_plain(plain_llama, draft):
    model, _ = plain_llama
    new = check_padded_batch(model, [60, 41, 41, 23, 5, 1], 12, seed=22, draft=draft)  # any lengths, even one token
    assert len({tuple(row) for row in new.tolist()}) > 1


def forwards(model):
    """Counts decoder forwards (a prefill runs the decoder without the LM head wrapper)."""
    calls = []
    handle = model.base_model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_drafted_decoding_same_tokens_in_fewer_forwards(plain_llama, longrope_llama):
    """Prompt-lookup drafting: rows that fall into loops accept most guesses (rows then advance at different
    rates, rejected guesses leave masked cache slots), and every row keeps its one-token-per-step tokens."""
    model, _ = plain_llama
    calls, handle = forwards(model)
    try:
        check_padded_batch(model, [60, 40], 40, seed=42, draft=0)
        plain, calls[:] = len(calls), []
        new = check_padded_batch(model, [60, 40], 40, seed=42, draft=6)
        drafted = len(calls)
    finally:
        handle.remove()
    assert drafted < plain - 8  # (both counts include the rows-alone references)
    assert torch.equal(greedy_generate(model, prompts([60, 40], seed=42), 40, draft_tokens=50)[:, 60:], new)  # holes capped
    assert new[0, -8:].tolist() == [43, 0] * 4 and new[1, -8:].tolist() == [10] * 8  # the loops
    model, _ = longrope_llama  # crossing L0 mid-generation: one token per step, the batch in step
    ps = prompts([28, 28], seed=3)
    calls, handle = forwards(model)
    try:
        out = greedy_generate(model, ps, 12, draft_tokens=6)
    finally:
        handle.remove()
    assert len(calls) == 12  # one forward per token (the first past L0 over the whole sequence: the rebuild)
    assert torch.equal(out, greedy_generate(model, ps, 12))


def test_prompt_lookup_drafts():
    """The tokens after the latest earlier occurrence of the last 3 (else 2, else 1) tokens, continued through
    the draft itself (a loop keeps looping)."""
    from longrope2.generation import _Drafter

    def brute(seq, k):
        for size in range(min(3, len(seq) - 1), 0, -1):
            starts = [i for i in range(len(seq) - size) if seq[i:i + size] == seq[-size:]]
            if starts:
                out, src = [], starts[-1] + size
                for j in range(src, src + k):
                    out.append(seq[j] if j < len(seq) else out[j - len(seq)])
                return out
        return []

    assert _Drafter([5, 6, 7, 5, 6]).draft(4) == [7, 5, 6, 7]
    assert _Drafter([9, 9]).draft(3) == [9, 9, 9] and _Drafter([1, 2, 3]).draft(3) == [] and _Drafter([1]).draft(2) == []
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        seq = torch.randint(0, 4, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).tolist()
        d = _Drafter(seq[:len(seq) // 2])
        d.extend(seq[len(seq) // 2:])
        assert d.draft(5) == brute(seq, 5), seq


@pytest.mark.parametrize("draft", [0, 4])
@pytest.mark.parametrize("kind", ["longrope", "plain"])
def test_padded_batch_rows_finishing_early(longrope_llama, plain_llama, kind, draft):
    """Rows that meet eos repeat it while the others go on; the batch ends when every row has finished."""
    model = (longrope_llama if kind == "longrope" else plain_llama)[0]
    lengths, seed = [44, 40, 36, 35], 23
    ps = prompts(lengths, seed=seed)
    firsts = [full_recompute(model, p, 14)[0].tolist() for p in ps]
    eos = next(t for t in firsts[1][2:] if firsts[1].index(t) >= 2)  # row 1 meets it at its 3rd new token or later
    new = check_padded_batch(model, lengths, 14, seed=seed, eos=eos, draft=draft)
    ends = [row.index(eos) if eos in row else None for row in new.tolist()]
    assert ends[1] is not None and ends[1] >= 2
    assert any(e is None or e > ends[1] for e in ends)  # some row decoded on after row 1 finished
    if all(e is not None for e in ends):
        assert new.shape[1] == max(ends) + 1  # no step after the last row finished


def test_padded_batch_refuses_rows_on_different_sides_of_L0(longrope_llama):
    model, _ = longrope_llama
    assert batch_class(L0, 33, 8) == "long" and batch_class(L0, 25, 8) == "short"
    assert batch_class(L0, 26, 8) == ("crosses", 26) and batch_class(None, 26, 8) == "any"
    for lengths in ([40, 20], [28, 27], [28, 20]):  # long + short, two crossing lengths, crossing + short
        with pytest.raises(ValueError, match="different sides of L0"):
            greedy_generate(model, prompts(lengths), 8)
    with pytest.raises(ValueError, match="left padding"):
        greedy_generate(model, torch.tensor(prompts([4, 4])), 2, attention_mask=torch.tensor([[1, 1, 1, 0], [1] * 4]))


def test_generate_until_batches_by_class(longrope_llama, plain_llama):
    """Longest first; with the factor switch, within-L0 rows and past-L0 rows each share padded batches and a row
    crossing L0 mid-generation only one with rows of its length; without it any lengths mix."""
    lengths = [20, 28, 40, 12, 36, 28, 10, 29]  # 8 new tokens: 40, 36 long; 29, 28 crossing; 20, 12, 10 short
    ps = prompts(lengths, seed=24)
    reqs = [request(as_text(p), 8, doc_id=i) for i, p in enumerate(ps)]
    for (model, tok), want in ((longrope_llama, [[40, 36], [29], [28, 28], [20, 12, 10]]),
                               (plain_llama, [[40, 36, 29, 28], [28, 20, 12, 10]])):
        refs = [reference(model, tok, p, 8)[0] for p in ps]
        for draft in (0, 3):
            lm = LongContextLM(model, tok, max_length=TARGET, batch_size=4, draft_tokens=draft)
            calls = spy(lm)
            assert lm.generate_until(reqs, disable_tqdm=True) == refs
            assert calls == want


def test_stop_strings_and_max_gen_toks(longrope_llama):
    model, tok = longrope_llama
    lm = LongContextLM(model, tok, max_length=TARGET)
    ids = prompts([26], seed=7)[0]
    p = as_text(ids)
    full = lm.generate_until([request(p, 14)], disable_tqdm=True)[0]
    assert full == reference(model, tok, ids, 14)[0]
    words = full.split()
    assert len(words) >= 4, full
    term = " " + words[3]  # a stop string at (or, as a substring, before) the 4th word
    cut = lm.generate_until([request(p, 14, until=[term]), request(p, 3)], disable_tqdm=True)
    assert cut[0] == full.split(term)[0] and cut[0]
    assert cut[1] == reference(model, tok, ids, 3)[0]  # max_gen_toks counts tokens (some decode to nothing)


def test_stop_check_reads_each_row_up_to_its_eos(longrope_llama):
    """Rows behind the longest (drafting) are filled with eos: the check reads each row's own last tokens."""
    model, tok = longrope_llama
    stop = LongContextLM(model, tok, max_length=TARGET)._stopper([["w5"], [], ["w7 w8"], ["w9"], ["w3"]])
    w = [i + 4 for i in range(12)]  # token of word "w{i}"
    new = torch.tensor([[w[1], w[5], 2, 2, 2, 2], [w[5]] * 6, [w[6], w[7], w[8], 2, 2, 2], [w[1]] * 6,
                        [w[3], w[1], w[1], w[1], w[1], w[1]]])
    assert stop(new).tolist() == [True, False, True, False, True]


def test_prompt_that_does_not_fit_is_refused_before_any_decoding(longrope_llama):
    model, tok = longrope_llama
    lm = LongContextLM(model, tok, max_length=40)
    calls = spy(lm)
    ps = prompts([20, 30])
    reqs = [request(as_text(ps[0]), 12, doc_id=3), request(as_text(ps[1]), 12, task="ruler_vt_8192", doc_id=7)]
    with pytest.raises(LongRoPE2Error) as e:
        lm.generate_until(reqs, disable_tqdm=True)
    msg = str(e.value)
    assert "\n" not in msg and calls == []
    assert msg == ("ruler_vt_8192, doc 7: prompt 30 + max_gen_toks 12 = 42 tokens exceeds max_length 40 "
                   "(LongContextLM truncates only generation prompts, and only with truncate='middle')")
    middle = LongContextLM(model, tok, max_length=40, truncate="middle")  # LongBench: keep both ends
    job = middle._job(0, reqs[1])
    ids = middle.tok_encode(as_text(ps[1]))
    assert job.ids == ids[:14] + ids[-14:] and middle.truncated == 1
    with pytest.raises(LongRoPE2Error, match="decodes greedily"):
        lm.generate_until([Instance("generate_until", {}, ("w1", {"do_sample": True, "temperature": 0.7}), 0)])
    with pytest.raises(LongRoPE2Error, match="max_length: must be a positive integer"):
        LongContextLM(model, tok, max_length=None)


def test_prompts_are_tokenized_as_the_ruler_generator_counts_them(longrope_llama):
    from longrope2.evaluation.ruler import prompt_ids

    model, tok = longrope_llama
    for t, text in ((tok, "w1 w2 w3"), (char_tokenizer(), "Where is it?\n Answer:")):
        assert LongContextLM(model, t, max_length=TARGET).tok_encode(text) == prompt_ids(t, text)
    req = Instance("generate_until", {"prompt_tokens": 5}, ("w1 w2", {"until": [], "max_gen_toks": 2}), 0,
                   metadata=("ruler_vt_4096", 4, 1))
    with pytest.raises(LongRoPE2Error, match=r"ruler_vt_4096, doc 4: the data counts 5 prompt tokens, this tokenizer gives 3"):
        LongContextLM(model, tok, max_length=TARGET).generate_until([req])


# --------------------------------------------------------------------------------------------------
# Teacher-forced scoring
# --------------------------------------------------------------------------------------------------


def full_logprobs(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_loglikelihood_equals_full_forward(longrope_llama):
    model, tok = longrope_llama
    lm = LongContextLM(model, tok, max_length=TARGET, batch_size=8)
    ctx = prompts([36], seed=11)[0]  # past L0: long factors
    choices = [" w1", " w2", " w3 w4 w5", " w90"]
    reqs = [Instance("loglikelihood", {}, (as_text(ctx), c), i) for i, c in enumerate(choices)]
    got = lm.loglikelihood(reqs, disable_tqdm=True)
    for (ll, greedy), c in zip(got, choices):
        cont = tok.encode(c.strip(), add_special_tokens=False)
        lp = full_logprobs(model, ctx + cont)
        rows = lp[len(ctx) - 1:len(ctx) - 1 + len(cont)]
        assert ll == pytest.approx(float(rows.gather(-1, torch.tensor(cont)[:, None]).sum()), abs=1e-4)
        assert greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())
    greedy_word = int(full_logprobs(model, ctx)[-1, 4:].argmax()) + 4  # best ordinary word
    if greedy_word == int(full_logprobs(model, ctx)[-1].argmax()):
        (_, is_greedy), = lm.loglikelihood([Instance("loglikelihood", {}, (as_text(ctx), " " + as_text([greedy_word])), 0)])
        assert is_greedy
    with pytest.raises(LongRoPE2Error, match="exceeds max_length 30"):
        LongContextLM(model, tok, max_length=30).loglikelihood(reqs[:1])


def test_loglikelihood_rolling_and_sliced_head(longrope_llama):
    model, tok = longrope_llama
    ids = prompts([60], seed=13)[0]  # BOS + 59 words: the prefix token conditions the first word
    lp = full_logprobs(model, ids[:-1])
    want = float(lp.gather(-1, torch.tensor(ids[1:])[:, None]).sum())
    req = [Instance("loglikelihood_rolling", {}, (as_text(ids),), 0)]
    whole = LongContextLM(model, tok, max_length=TARGET).loglikelihood_rolling(req, disable_tqdm=True)
    sliced = LongContextLM(model, tok, max_length=TARGET, logits_budget=7 * VOCAB).loglikelihood_rolling(req, disable_tqdm=True)
    assert whole[0] == pytest.approx(want, abs=1e-3) and sliced[0] == pytest.approx(want, abs=1e-3)
    windows = LongContextLM(model, tok, max_length=25).loglikelihood_rolling(req, disable_tqdm=True)
    assert windows[0] < 0 and windows[0] != pytest.approx(want, abs=1e-3)  # less context per token
