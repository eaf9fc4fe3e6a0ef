"""The work a stage's model computes (tokens, FLOPs actually computed) as counted into its manifest."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from longrope2 import workload
from longrope2.artifacts import StageRun

HEADS, HEAD_DIM, LAYERS, HIDDEN, VOCAB = 2, 8, 2, 16, 64


@pytest.fixture
def model():
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=32, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
                      max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).eval()
    workload.reset()
    workload.attach(lm)
    yield lm
    workload.reset()


def layer_params(lm):
    return sum(p.numel() for p in lm.model.layers.parameters())


ATTN = 4 * HEADS * HEAD_DIM * LAYERS  # FLOPs per attended (query, key) pair, all layers


def test_causal_forward_counts_half_the_square(model):
    with torch.no_grad():
        model(input_ids=torch.randint(0, VOCAB, (2, 16)))
    w = workload.snapshot()
    assert (w["forwards"], w["tokens"], w["trained_tokens"], w["head_rows"]) == (1, 32, 0, 32)
    assert w["attention_flops"] == ATTN * 2 * (16 * 17 / 2)
    assert w["linear_flops"] == 2 * layer_params(model) * 32
    assert w["head_flops"] == 2 * VOCAB * HIDDEN * 32
    assert w["flops"] == w["attention_flops"] + w["linear_flops"] + w["head_flops"]
    assert w["peak_gpu_mib"] is None or w["peak_gpu_mib"] >= 0


def test_cached_decoding_counts_the_cache_it_reads(model):
    import inspect

    from transformers import DynamicCache

    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.randint(0, VOCAB, (1, 10)), use_cache=True, logits_to_keep=1, **{cache_arg: cache})
        model(input_ids=torch.randint(0, VOCAB, (1, 1)), use_cache=True, logits_to_keep=1, **{cache_arg: cache})
    w = workload.snapshot()
    assert (w["tokens"], w["head_rows"]) == (11, 2)  # the head only at the kept position
    assert w["attention_flops"] == ATTN * (10 * 11 / 2 + 11)


def test_training_with_document_masks_counts_backward_not_recomputation(model):
    """Per-document position ids count each document's own triangle; the backward is 2x the forward; the
    checkpointed head's recomputation in backward is not counted again."""
    from longrope2.stages.finetune import CausalLMLoss

    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    loss = CausalLMLoss(model, chunk=5)
    ids = torch.randint(0, VOCAB, (1, 16))
    pos = torch.cat([torch.arange(10), torch.arange(6)])[None]
    nll, count = loss(ids, pos, ids.clone())
    nll.backward()
    w = workload.snapshot()
    assert w["trained_tokens"] == 16 and w["head_rows"] == int(count) == 15
    assert w["attention_flops"] == 3 * ATTN * (10 * 11 / 2 + 6 * 7 / 2)
    assert w["linear_flops"] == 3 * 2 * layer_params(model) * 16
    assert w["head_flops"] == 3 * 2 * VOCAB * HIDDEN * 15


def test_stage_manifest_records_the_work(model, tmp_path):
    with torch.no_grad():
        model(input_ids=torch.randint(0, VOCAB, (1, 8)))
    with StageRun("probe", tmp_path, {}) as run:
        run.write_json("x.json", {})
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert man["work"]["tokens"] == 8 and man["work"]["flops"] > 0 and "compute_window_s" in man["work"]


def test_no_model_no_work(tmp_path):
    workload.reset()
    with StageRun("probe", tmp_path, {}) as run:
        run.write_json("x.json", {})
    man = json.loads((tmp_path / "manifest.json").read_text())
    assert "work" not in man or man["work"]["peak_gpu_mib"] is not None
