"""RoPE core: parity with transformers' own ROPE_INIT_FUNCTIONS and known critical dimensions."""

import math

import numpy as np
import pytest
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longrope2 import rope
from longrope2.errors import ConfigError

# name: (config class, kwargs, L0, target)
REAL = {
    "llama3-8b": (LlamaConfig, dict(hidden_size=4096, num_attention_heads=32, head_dim=128, rope_theta=500000.0), 8192, 131072),
    "phi3-mini": (Phi3Config, dict(hidden_size=3072, num_attention_heads=32, rope_theta=10000.0), 2048, 131072),
    "smollm2-135m": (LlamaConfig, dict(hidden_size=576, num_attention_heads=9, head_dim=64, rope_theta=100000.0), 8192, 32768),
    "phi4-mini": (Phi3Config, dict(hidden_size=3072, num_attention_heads=24, partial_rotary_factor=0.75, rope_theta=10000.0), 4096, 131072),
}


def make(name, rope_parameters=None, llama=False):
    """HF config of a real model's geometry. Phi3Config accepts only default/longrope rope types, so
    linear/yarn parity uses a LlamaConfig with the same geometry (``llama=True``)."""
    cls, kw, l0, target = REAL[name]
    kw = dict(kw)
    if cls is Phi3Config and not llama:
        kw["original_max_position_embeddings"] = l0
    elif llama:
        cls = LlamaConfig
        kw.setdefault("head_dim", kw["hidden_size"] // kw["num_attention_heads"])
    theta = kw.pop("rope_theta")
    prf = kw.pop("partial_rotary_factor", None)
    params = {"rope_type": "default", "rope_theta": theta, **(rope_parameters or {})}
    if prf is not None:
        params["partial_rotary_factor"] = prf
    cfg = cls(num_hidden_layers=1, vocab_size=32, max_position_embeddings=target, rope_parameters=params, **kw)
    if prf is not None:
        cfg.partial_rotary_factor = prf
    geom = rope.RopeGeometry.from_hf_config(cfg, original_length=l0)
    return cfg, geom, target


def hf_factors(cfg, geom, seq_len):
    """lambda_i implied by transformers: theta_i / inv_freq_i, plus its attention factor."""
    fn = ROPE_INIT_FUNCTIONS[cfg.rope_parameters["rope_type"]]
    inv, att = fn(cfg, "cpu", seq_len=seq_len)
    base = rope.inv_freq(geom).double()
    return (base / inv.double()).numpy(), att


@pytest.mark.parametrize("name", list(REAL))
def test_linear_matches_transformers(name):
    cfg, geom, target = make(name)
    s = target / geom.original_length
    cfg, _, _ = make(name, {"rope_type": "linear", "factor": s}, llama=True)
    mine = rope.pi(geom, target)
    lam, att = hf_factors(cfg, geom, target)
    np.testing.assert_allclose(mine.long_factor, lam, rtol=1e-6)
    assert mine.attention_factor == pytest.approx(att, abs=1e-6)
    assert mine.hf_rope_parameters["rope_type"] == "linear"


@pytest.mark.parametrize("name", list(REAL))
def test_yarn_matches_transformers(name):
    _, geom, target = make(name)
    s = target / geom.original_length
    mine = rope.yarn(geom, target)
    cfg, _, _ = make(name, {k: v for k, v in mine.hf_rope_parameters.items() if k != "partial_rotary_factor"}, llama=True)
    lam, att = hf_factors(cfg, geom, target)
    np.testing.assert_allclose(mine.long_factor, lam, rtol=1e-6)
    assert mine.attention_factor == pytest.approx(att, abs=1e-6)
    assert mine.attention_factor == pytest.approx(0.1 * math.log(s) + 1)
    # fast pairs extrapolate, slow pairs are interpolated by s
    assert mine.long_factor[0] == pytest.approx(1.0) and mine.long_factor[-1] == pytest.approx(s)


@pytest.mark.parametrize("name", list(REAL))
@pytest.mark.parametrize("method", ["longrope", "longrope2"])
def test_longrope_matches_transformers_short_and_long(name, method):
    _, geom, target = make(name)
    s = target / geom.original_length
    rng = np.random.default_rng(0)
    if method == "longrope2":
        d_rcd = rope.critical_dim(geom) - 3
        high = np.sort(rng.uniform(s, 2 * s, geom.n_pairs - d_rcd))
        mine = rope.longrope2(geom, target, d_rcd, high)
    else:
        mine = rope.longrope(geom, target, np.sort(rng.uniform(1, 1.25 * s, geom.n_pairs)))
    cfg, _, _ = make(name, {k: v for k, v in mine.hf_rope_parameters.items() if k != "partial_rotary_factor"})
    lam_long, att = hf_factors(cfg, geom, target)
    lam_short, _ = hf_factors(cfg, geom, geom.original_length)
    np.testing.assert_allclose(mine.long_factor, lam_long, rtol=1e-6)
    np.testing.assert_allclose(mine.short_factor, lam_short, rtol=1e-6)
    assert mine.attention_factor == pytest.approx(att, abs=1e-6)
    # HF's default attention factor (no explicit key) is the same formula
    params = {k: v for k, v in mine.hf_rope_parameters.items() if k not in ("attention_factor", "partial_rotary_factor")}
    cfg2, _, _ = make(name, params)
    assert hf_factors(cfg2, geom, target)[1] == pytest.approx(mine.attention_factor, abs=1e-6)


@pytest.mark.parametrize(
    "name, d_tcd, d10",
    [("llama3-8b", 35, 24), ("phi3-mini", 31, 19), ("phi4-mini", 34, None), ("smollm2-135m", 20, None)],
)
def test_critical_dimensions_of_real_models(name, d_tcd, d10):
    _, geom, _ = make(name)
    assert rope.critical_dim(geom) == d_tcd
    if d10 is not None:
        assert rope.critical_dim_10(geom) == d10
    # by definition: the first pair whose period exceeds L0
    per = rope.periods(geom)
    assert per[d_tcd] > geom.original_length >= per[d_tcd - 1]


def test_phi4_partial_rotary_geometry():
    _, geom, _ = make("phi4-mini")
    assert (geom.head_dim, geom.rotary_dim, geom.n_pairs) == (128, 96, 48)


@pytest.mark.parametrize("name, expected", [("llama3-8b", 1.1435), ("phi4-mini", 1.1902)])
def test_longrope_attention_factor_reference(name, expected):
    _, geom, target = make(name)
    assert rope.longrope_attention_factor(geom, target) == pytest.approx(expected, abs=1e-4)


def test_ntk_critical_dimension_form():
    _, geom, target = make("llama3-8b")
    s = target / geom.original_length
    out = rope.ntk(geom, target)
    expo = math.log(target / (2 * math.pi)) / math.log(geom.original_length / (2 * math.pi))
    assert out.extra["new_base"] == pytest.approx(geom.rope_base**expo, rel=1e-12)
    # the pair whose period is exactly L0 gets period L (factor s), interpolating the discrete pairs
    ic = rope.continuous_critical_dim(geom)
    assert np.interp(ic, np.arange(geom.n_pairs), np.log(out.long_factor)) == pytest.approx(math.log(s), rel=1e-3)
    assert out.hf_rope_parameters == {"rope_theta": out.extra["new_base"], "rope_type": "default"}
    rcd = rope.ntk_rcd(geom, target, d_rcd=30)
    assert rcd.long_factor[30] == pytest.approx(s)
    assert rcd.long_factor[0] == 1.0 and np.all(np.diff(rcd.long_factor) > 0)


def test_ntk_static_base():
    _, geom, target = make("smollm2-135m")
    out = rope.ntk_static(geom, target)
    d, s = geom.rotary_dim, target / geom.original_length
    assert out.extra["new_base"] == pytest.approx(geom.rope_base * s ** (d / (d - 2)))
    assert out.long_factor[-1] == pytest.approx(s)


def test_longrope2_structure_and_released_llama3_shape():
    _, geom, target = make("llama3-8b")
    s = target / geom.original_length
    high = np.linspace(21.81, 26.05, geom.n_pairs - 33)
    out = rope.longrope2(geom, target, d_rcd=33, high_factors=high)
    lam = out.long_factor
    i = np.arange(33)
    np.testing.assert_allclose(lam[:33], 21.81 ** (i / 33), rtol=1e-12)
    np.testing.assert_allclose(lam[33:], high)
    assert lam[0] == 1.0 and np.all(np.diff(lam) >= 0)
    assert np.all(out.short_factor == 1.0)
    assert rope.ood_bound_ok(geom, target, lam)
    assert not rope.ood_bound_ok(geom, target, rope.yarn(geom, target).long_factor * 0 + s * 0.9)
    default = rope.longrope2(geom, target)
    assert default.extra["d_rcd"] == 35 and default.long_factor[35] == pytest.approx(s)


def test_geometry_from_old_and_new_style_configs():
    old = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 500000.0,
           "max_position_embeddings": 8192, "rope_scaling": None}
    g = rope.RopeGeometry.from_hf_config(old)
    assert (g.rotary_dim, g.rope_base, g.original_length) == (128, 500000.0, 8192)
    phi3_128k = {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32, "rope_theta": 10000.0,
                 "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
                 "rope_scaling": {"type": "longrope", "long_factor": [1.0] * 48, "short_factor": [1.0] * 48}}
    assert rope.RopeGeometry.from_hf_config(phi3_128k).original_length == 4096
    v5 = {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 24, "max_position_embeddings": 4096,
          "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}}
    assert rope.RopeGeometry.from_hf_config(v5).rotary_dim == 96


def test_rejects_models_without_rope_and_bad_targets():
    with pytest.raises(ConfigError, match="^model:"):
        rope.RopeGeometry.from_hf_config({"model_type": "gpt2", "n_embd": 768, "n_head": 12})
    _, geom, _ = make("smollm2-135m")
    with pytest.raises(ConfigError, match="extension.target_length"):
        rope.pi(geom, 4096)
    with pytest.raises(ConfigError, match="method"):
        rope.get_method("rope-magic")


def test_hf_parameters_round_trip():
    _, geom, target = make("phi3-mini")
    for name in ("pi", "yarn", "ntk", "longrope2"):
        m = rope.METHODS[name](geom, target)
        back = rope.from_hf_rope_parameters(geom, m.hf_rope_parameters, target)
        np.testing.assert_allclose(back.long_factor, m.long_factor, rtol=1e-9)
        np.testing.assert_allclose(back.short_factor, m.short_factor, rtol=1e-9)
        assert back.attention_factor == pytest.approx(m.attention_factor)
