"""Needle samples (exact length, answer last and never truncated, deterministic) and the fast scorer."""

import numpy as np
import pytest
import torch

from longrope2 import scoring
from longrope2.corpus import TokenizedCorpus
from longrope2.errors import ConfigError
from longrope2.needles import IGNORE_INDEX, NeedleBuilder


@pytest.fixture
def builder(tiny_corpus, tiny_llama):
    _, tok = tiny_llama
    return NeedleBuilder(TokenizedCorpus(tiny_corpus, "test"), tok, seed=3)


@pytest.mark.parametrize("length, n_needles", [(320, 1), (512, 4), (1024, 1), (1024, 4)])
def test_sample_shape_and_answer(builder, length, n_needles):
    tok = builder.tok
    for _ in range(5):
        s = builder.sample(length, n_needles)
        assert s.input_ids.shape == (length,) and s.labels.shape == (length,)
        assert s.input_ids[0] == tok.bos_token_id and (s.input_ids == tok.bos_token_id).sum() == 1
        labelled = s.labels != IGNORE_INDEX
        # the answer is the only labelled span and the last tokens of the sample
        assert labelled.sum() == s.answer_len and labelled[-s.answer_len:].all()
        assert tok.decode(s.input_ids[-s.answer_len:].tolist()) == f" {s.value}"
        text = tok.decode(s.prompt.tolist())
        assert text.count("special magic numbers for") == n_needles
        assert f"is: {s.value}." in text and text.rstrip().endswith("mentioned in the provided text is")
        # every needle's answer, in haystack order; the asked one is the labelled answer
        assert len(s.answers) == n_needles and list(s.answers[s.asked]) == s.input_ids[-s.answer_len:].tolist()
        at = [text.index(f"is:{tok.decode(list(a))}.") for a in s.answers]
        assert at == sorted(at)


def test_depths_and_determinism(tiny_corpus, tiny_llama):
    _, tok = tiny_llama
    test = TokenizedCorpus(tiny_corpus, "test")
    a = NeedleBuilder(test, tok, seed=11).sample(512, 1, depths=[0.5])
    b = NeedleBuilder(test, tok, seed=11).sample(512, 1, depths=[0.5])
    assert np.array_equal(a.input_ids, b.input_ids) and a.value == b.value
    assert abs(a.depths[0] - 0.5) < 0.2
    early = NeedleBuilder(test, tok, seed=11).sample(512, 1, depths=[0.0])
    assert early.depths[0] == 0.0
    with pytest.raises(ConfigError, match="cannot hold the needle template"):
        NeedleBuilder(test, tok, seed=1).sample(40, 4)


def test_fast_scorer_equals_naive_full_logits(builder, tiny_llama):
    model, _ = tiny_llama
    samples = [builder.sample(384, 2) for _ in range(3)]
    ids = torch.from_numpy(np.stack([s.input_ids for s in samples]))
    lab = torch.from_numpy(np.stack([s.labels for s in samples]))
    fast, naive = scoring.score(model, ids, lab), scoring.score_naive(model, ids, lab)
    torch.testing.assert_close(fast.nll, naive.nll, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.n_tokens, naive.n_tokens) and torch.equal(fast.all_correct, naive.all_correct)
    # plain PPL: every token labelled, chunked head
    full = ids.clone()
    f2, n2 = scoring.score(model, ids, full, chunk_rows=37), scoring.score_naive(model, ids, full)
    torch.testing.assert_close(f2.nll, n2.nll, rtol=1e-5, atol=1e-5)


def test_needle_choice_is_the_value_of_least_answer_nll(builder, tiny_llama):
    """needle_choice batches every needle's value in place of the asked one; it must pick what scoring each
    swapped row alone picks, and its summary must count places and the asked share."""
    from longrope2.stages.retrieval import choice_summary

    model, _ = tiny_llama
    samples = builder.draw(384, 4, 5)
    chosen = scoring.needle_choice(model, samples, batch_tokens=1000)  # 2 rows per batch: batches split samples
    for s, c in zip(samples, chosen):
        nll = []
        for a in s.answers:
            ids = torch.from_numpy(np.concatenate([s.prompt, a]))[None]
            lab = torch.full_like(ids, IGNORE_INDEX)
            lab[0, -len(a):] = ids[0, -len(a):]
            nll.append(float(scoring.score_naive(model, ids, lab).nll[0]))
        assert c == int(np.argmin(nll))
    summary = choice_summary([0, 1, 1, 3], [0, 1, 2, 2], 4)
    assert summary["asked"] == 0.5 and summary["chosen_at"] == [0.25, 0.5, 0.0, 0.25]
    assert summary["asked_at"] == [1, 1, 2, 0] and summary["accuracy_asked_at"] == [1.0, 1.0, 0.0, None]


def test_exact_match_equals_greedy_decoding(builder, tiny_llama):
    model, tok = tiny_llama
    s = builder.sample(256, 1)
    ids = torch.from_numpy(s.input_ids)[None]
    # make the model's own greedy continuation the "answer" and check the scorer calls it correct
    prompt = ids[:, : -s.answer_len]
    gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=s.answer_len, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    own = gen[0]
    lab = torch.full_like(own, IGNORE_INDEX)
    lab[-s.answer_len:] = own[-s.answer_len:]
    assert scoring.score(model, own[None], lab[None]).all_correct.item()
    lab[-1] = (own[-1] + 1) % len(tok)
    other = own.clone()
    other[-1] = lab[-1]
    assert not scoring.score(model, other[None], lab[None]).all_correct.item()


@pytest.mark.parametrize("family", ["llama-gqa-yarn", "qwen2"])
def test_last_layer_at_labelled_positions_equals_full_forward(tiny_corpus, family, monkeypatch):
    """Few labelled positions: the last layer runs its queries and MLP only there (GQA, a YaRN attention
    factor and Qwen2's biased projections included), and scores as the whole forward does."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from longrope2 import rope

    tok = AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(1)
    model = (LlamaForCausalLM(LlamaConfig(**common)) if family.startswith("llama")
             else Qwen2ForCausalLM(Qwen2Config(**common))).eval()
    if family.endswith("yarn"):
        rope.apply_scaling(model, rope.yarn(rope.RopeGeometry(32, 10000.0, 128), 512))
    ids = torch.randint(4, len(tok), (3, 512))
    lab = torch.full_like(ids, IGNORE_INDEX)
    lab[:, -8:] = ids[:, -8:]
    lab[1, -8:], lab[1, 300:306] = IGNORE_INDEX, ids[1, 300:306]  # rows answer at different places
    calls = []
    real = scoring._hidden_at
    monkeypatch.setattr(scoring, "_hidden_at", lambda *a: calls.append(1) or real(*a))
    fast, naive = scoring.score(model, ids, lab), scoring.score_naive(model, ids, lab)
    assert calls, "the labelled-positions path was not taken"
    torch.testing.assert_close(fast.nll, naive.nll, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.n_tokens, naive.n_tokens) and torch.equal(fast.all_correct, naive.all_correct)
    calls.clear()
    scoring.score(model, ids, ids.clone())  # every token labelled: the whole forward
    assert not calls


def test_prefill_logits_and_cache_equal_a_cached_forward(tiny_llama, monkeypatch):
    """Generation's prefill (last layer at the last position only) gives the logits and the cache of a
    cached full forward, so decoding from it continues exactly."""
    from transformers import DynamicCache

    model, tok = tiny_llama
    ids = torch.randint(4, len(tok), (2, 96))
    ref_cache, cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=True, logits_to_keep=1, cache=ref_cache).logits[:, -1]
        calls, real = [], scoring._hidden_at
        monkeypatch.setattr(scoring, "_hidden_at", lambda *a: calls.append(1) or real(*a))
        got = scoring.prefill_logits(model, ids, cache, "cache")
    assert calls
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ref_cache.layers, cache.layers):
        torch.testing.assert_close(a.keys, b.keys)
        torch.testing.assert_close(a.values, b.values)
