"""A model patched in place gives the same logits as the same weights built from the exported config."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

from longrope2 import rope

L0, TARGET = 32, 128


def tiny(kind):
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=L0)
    if kind == "llama":
        cfg = LlamaConfig(**common, head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    else:
        cfg = Phi3Config(**common, original_max_position_embeddings=L0, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    geom = rope.RopeGeometry.from_hf_config(cfg, original_length=L0)
    return model, geom


def candidates(geom):
    s = TARGET / L0
    d_rcd = max(1, rope.critical_dim(geom) - 1)
    high = np.linspace(s, 1.7 * s, geom.n_pairs - d_rcd)
    yield rope.none(geom, TARGET)
    for name in ("pi", "ntk_static", "ntk", "yarn"):
        yield rope.METHODS[name](geom, TARGET)
    yield rope.ntk_rcd(geom, TARGET, d_rcd=d_rcd)
    yield rope.yarn_rcd(geom, TARGET, d_rcd=d_rcd)
    yield rope.longrope(geom, TARGET, np.linspace(1.0, 1.2 * s, geom.n_pairs))
    yield rope.longrope2(geom, TARGET, d_rcd, high)


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_in_place_patch_equals_exported_checkpoint(kind, tmp_path):
    model, geom = tiny(kind)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 97, (1, 100), generator=torch.Generator().manual_seed(1))
    for scaling in candidates(geom):  # swap candidates one after another on the same loaded model
        rope.apply_scaling(model, scaling)
        cfg = model.config.__class__.from_dict(model.config.to_dict())
        fresh = AutoModelForCausalLM.from_config(cfg).eval()
        fresh.load_state_dict(state, strict=False)
        for n in (24, 100):  # inside L0 (short factors) and beyond it (long factors)
            with torch.no_grad():
                a = model(ids[:, :n]).logits
                b = fresh(ids[:, :n]).logits
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=f"{scaling.method} at {n}")


def test_switch_uses_short_inside_and_long_beyond_L0():
    model, geom = tiny("llama")
    ids = torch.randint(0, 97, (1, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base_short = model(ids[:, :24]).logits
    s = TARGET / L0
    lr2 = rope.longrope2(geom, TARGET, rope.critical_dim(geom), None)
    rope.apply_scaling(model, lr2)
    lr2_pi_long = rope.longrope(geom, TARGET, np.full(geom.n_pairs, s), np.ones(geom.n_pairs))
    with torch.no_grad():
        short = model(ids[:, :24]).logits
    # short factors are 1: only the attention factor differs from the original model inside L0
    assert not torch.allclose(short, base_short)
    rope.apply_scaling(model, rope.none(geom, TARGET))
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, :24]).logits, base_short)
    rope.apply_scaling(model, lr2_pi_long)
    with torch.no_grad():
        long_logits = model(ids).logits
    rope.apply_scaling(model, rope.pi(geom, TARGET))
    model.model.rotary_emb.attention_scaling = lr2_pi_long.attention_factor
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, long_logits, atol=2e-5, rtol=1e-4)


def test_geometry_mismatch_is_reported():
    model, geom = tiny("llama")
    wrong = rope.RopeGeometry(head_dim=16, rope_base=10000.0, original_length=L0)
    with pytest.raises(Exception, match="rotary pairs"):
        rope.apply_scaling(model, rope.pi(wrong, TARGET))
