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
        rope.build("rope-magic", geom, 4096)


def test_hf_parameters_round_trip():
    _, geom, target = make("phi3-mini")
    for name in ("pi", "yarn", "ntk", "longrope2"):
        m = rope.METHODS[name](geom, target)
        back = rope.from_hf_rope_parameters(geom, m.hf_rope_parameters, target)
        np.testing.assert_allclose(back.long_factor, m.long_factor, rtol=1e-9)
        np.testing.assert_allclose(back.short_factor, m.short_factor, rtol=1e-9)
        assert back.attention_factor == pytest.approx(m.attention_factor)


# --------------------------------------------------------------------------------------------------
# build(): registry names, named parameters only
# --------------------------------------------------------------------------------------------------

import inspect  # noqa: E402
import json  # noqa: E402

from longrope2 import methods  # noqa: E402

SOURCE = "results/x/search/longrope2/factors.json"


def registry_dict(name, geom, target, seed=0):
    """What the pipeline writes for a registry method (baselines, searches, exports): to_dict() plus extras."""
    rng = np.random.default_rng(seed)
    m, n, s = methods.REGISTRY[name], geom.n_pairs, target / geom.original_length
    d_rcd = rope.critical_dim(geom) - 2
    if m.rope_function == "longrope2":  # searched high factors, NTK fill below d_rcd
        out = rope.build(name, geom, target, d_rcd=d_rcd, high_factors=np.sort(rng.uniform(s, 2 * s, n - d_rcd)))
    elif m.rope_function == "longrope":  # free per-pair factors; the all-pairs search marks d_rcd = 0
        out = rope.build(name, geom, target, long_factor=np.sort(rng.uniform(1, 1.25 * s, n)))
        out.extra["d_rcd"] = 0
    elif m.needs_d_rcd:
        out = rope.build(name, geom, target, d_rcd=d_rcd)
    elif m.rope_function == "fixed_factors":  # a published set, taken verbatim
        out = rope.build(name, geom, target, long_factor=np.sort(rng.uniform(1, 2 * s, n)), short_factor=np.ones(n))
    elif m.rope_function == "as_is":  # a checkpoint's own longrope parameters (short factors not 1, as Phi-3's)
        out = rope.build(name, geom, target, rope_parameters={
            "rope_type": "longrope", "long_factor": np.sort(rng.uniform(1, 2 * s, n)).tolist(),
            "short_factor": rng.uniform(1, 1.2, n).tolist()})
    else:
        out = rope.build(name, geom, target)
    extra = {"fitness": {"objective": "needle", "nll": 1.5}, "search": {"evaluated": 3}} if m.searched else {}
    return json.loads(json.dumps(out.to_dict() | extra))  # exactly what a file read gives back


@pytest.mark.parametrize("model", ["smollm2-135m", "phi4-mini"])
@pytest.mark.parametrize("name", list(methods.REGISTRY))
def test_every_registry_method_round_trips(model, name):
    _, geom, target = make(model)
    d = registry_dict(name, geom, target)
    back = rope.scaling_from_dict(d, SOURCE)
    assert back.method == name and back.to_dict() == d
    if methods.REGISTRY[name].rope_function == "longrope2":
        assert back.extra["d_rcd"] == rope.critical_dim(geom) - 2


def test_round_trip_of_other_pipeline_outputs():
    _, geom, target = make("llama3-8b")
    s = target / geom.original_length
    for sc in (rope.longrope2(geom, target),  # the search seed
               rope.longrope(geom, target, np.linspace(1, s, geom.n_pairs), np.linspace(1, 1.1, geom.n_pairs)),
               rope.yarn(geom, target, beta_fast=16.0, beta_slow=2.0, truncate=False)):
        d = json.loads(json.dumps(sc.to_dict()))
        assert rope.scaling_from_dict(d).to_dict() == d


def test_no_method_function_swallows_keys():
    for name, fn in rope.METHODS.items():
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, name
    _, geom, target = make("smollm2-135m")
    with pytest.raises(TypeError):
        rope.METHODS["pi"](geom, target, d_rcd=10)


@pytest.mark.parametrize("method, params, message", [
    ("ntk_rcd", {"d_rdc": 10}, "ntk_rcd: unknown parameter 'd_rdc'; allowed: d_rcd"),
    ("pi", {"d_rcd": 10}, "pi: unknown parameter 'd_rcd'; allowed: (none)"),
    ("yarn", {"beta_fats": 16.0}, "yarn: unknown parameter 'beta_fats'; allowed: beta_fast, beta_slow, truncate"),
    ("longrope2_all_pairs", {"d_rcd": 10}, "longrope2_all_pairs: unknown parameter 'd_rcd'; allowed: long_factor, short_factor"),
    ("longrope2_plain_ppl", {"high": [1.0]}, "longrope2_plain_ppl: unknown parameter 'high'; allowed: d_rcd, high_factors"),
    ("yarn_rcd", {}, "yarn_rcd: missing parameter 'd_rcd'; allowed: d_rcd"),
])
def test_build_rejects_unknown_and_missing_parameters(method, params, message):
    _, geom, target = make("smollm2-135m")
    with pytest.raises(ConfigError) as e:
        rope.build(method, geom, target, **params)
    assert str(e.value) == message


def test_build_resolves_registry_names():
    _, geom, target = make("smollm2-135m")
    with pytest.raises(ConfigError, match=r"^method: unknown method 'rope-magic'; allowed: none, pi, ntk_static"):
        rope.build("rope-magic", geom, target)
    ablation = rope.build("longrope2_all_pairs", geom, target, long_factor=np.full(geom.n_pairs, 2.0))
    assert ablation.method == "longrope2_all_pairs" and ablation.hf_rope_parameters["rope_type"] == "longrope"
    plain = rope.build("longrope2_plain_ppl", geom, target, d_rcd=18)
    np.testing.assert_array_equal(plain.long_factor, rope.longrope2(geom, target, 18).long_factor)
    assert plain.method == "longrope2_plain_ppl"


# --------------------------------------------------------------------------------------------------
# Factor files validated on read
# --------------------------------------------------------------------------------------------------


def _locate(d, path):
    """The container and key of ``path`` ('geometry.head_dim', 'long_factor.3') inside a factors dict."""
    *parents, last = path.split(".")
    for p in parents:
        d = d[int(p)] if isinstance(d, list) else d[p]
    return d, int(last) if isinstance(d, list) else last


def _set(path, value):
    def apply(d):
        box, key = _locate(d, path)
        box[key] = value
    return apply


def _scale(path, by):
    def apply(d):
        box, key = _locate(d, path)
        box[key] *= by
    return apply


def _del(key):
    return lambda d: d.pop(key)


BAD = [  # (base method, mutation, expected message after "<source>: ")
    ("pi", _del("method"), "method: missing, so this does not hold a RopeScaling dict"),
    ("pi", _set("method", "rope-magic"), "method: unknown method 'rope-magic'; allowed: none, pi"),
    ("pi", _del("geometry"), "geometry: missing"),
    ("pi", _set("geometry.head_dim", 63), "geometry.head_dim: must be a positive even integer, got 63"),
    ("pi", _set("geometry.rope_base", "1e4"), "geometry.rope_base: must be a finite number, got '1e4'"),
    ("pi", _set("geometry.rotary_dim", 96), "geometry.rotary_dim: is 96, but head_dim x partial_rotary_factor = 64"),
    ("pi", _set("target_length", 4096), "target_length: must be an integer above original_length=8192, got 4096"),
    ("pi", _set("target_length", 32768.5), "target_length: must be an integer above original_length=8192, got 32768.5"),
    ("pi", _set("scale", 8.0), "scale: must be target_length / original_length = 4.0, got 8.0"),
    ("pi", _set("long_factor", "4.0"), "long_factor: must be a list of 32 numbers, got '4.0'"),
    ("pi", lambda d: d["short_factor"].pop(), "short_factor: need 32 per-pair factors (n_pairs of the geometry), got 31"),
    ("longrope2", _set("long_factor.3", float("nan")), "long_factor[3]: must be a finite number > 0, got nan"),
    ("longrope2", _set("short_factor.0", float("inf")), "short_factor[0]: must be a finite number > 0, got inf"),
    ("longrope", _set("long_factor.5", 0), "long_factor[5]: must be a finite number > 0, got 0"),
    ("longrope", _set("short_factor.1", -1.0), "short_factor[1]: must be a finite number > 0, got -1.0"),
    ("longrope", _set("long_factor.2", "x"), "long_factor[2]: must be a finite number > 0, got 'x'"),
    ("longrope2", _set("attention_factor", float("nan")), "attention_factor: must be a finite number > 0, got nan"),
    ("yarn", _set("attention_factor", 0.0), "attention_factor: must be a finite number > 0, got 0.0"),
    ("longrope2", _set("d_rcd", 32), "d_rcd: must be an integer in [1, 31] for 32 pairs, got 32"),
    ("ntk_rcd", _set("d_rcd", 0), "d_rcd: must be an integer in [1, 31] for 32 pairs, got 0"),
    ("longrope2", _set("d_rcd", 17.5), "d_rcd: must be an integer in [1, 31] for 32 pairs, got 17.5"),
    ("ntk_rcd", _del("d_rcd"), "d_rcd: missing; ntk_rcd is anchored at the real critical dimension"),
    ("pi", _scale("long_factor.7", 1.01), "long_factor[7]: 4.04 differs from 4.0, the pi factor recomputed"),
    ("ntk_rcd", _set("d_rcd", 17), "long_factor[1]:"),
    ("yarn", _set("attention_factor", 1.5), "attention_factor: 1.5 differs from"),
    ("ntk", _scale("new_base", 1.1), "new_base:"),
    ("longrope2", _scale("long_factor.2", 1.1), "long_factor[2]:"),
    ("longrope2", _scale("long_factor.2", 1.1), "is not the NTK fill below d_rcd=18"),
    ("pi", _set("hf_rope_parameters.rope_theta", 500000.0),
     "hf_rope_parameters.rope_theta: 500000.0 differs from 100000.0 derived from the factors (stale or hand-edited"),
    ("longrope2", _scale("hf_rope_parameters.long_factor.10", 1.5), "hf_rope_parameters.long_factor[10]:"),
    ("longrope", _set("hf_rope_parameters.foo", 1), "hf_rope_parameters.foo: 1 is not among the parameters derived"),
    ("yarn", lambda d: d["hf_rope_parameters"].pop("factor"), "hf_rope_parameters.factor: missing; derived from the factors: 4.0"),
    ("longrope2", _set("hf_rope_parameters.attention_factor", 1.0), "hf_rope_parameters.attention_factor: 1.0 differs"),
    ("yarn", _set("hf_rope_parameters.beta_fast", 16.0), "long_factor["),  # stored knobs must reproduce the factors
]


@pytest.mark.parametrize("base, mutate, message", BAD, ids=[f"{i}-{b}" for i, (b, _, _) in enumerate(BAD)])
def test_bad_factor_files_fail_with_one_line(base, mutate, message):
    _, geom, target = make("smollm2-135m")
    assert (geom.n_pairs, rope.critical_dim(geom)) == (32, 20)
    d = registry_dict(base, geom, target)
    mutate(d)
    d = json.loads(json.dumps(d))  # NaN/Infinity tokens survive a JSON round trip; the check must catch them
    with pytest.raises(ConfigError) as e:
        rope.scaling_from_dict(d, SOURCE)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{SOURCE}: "), msg
    assert message in msg, msg


def test_not_a_mapping_and_nan_tokens():
    with pytest.raises(ConfigError, match=r"^factors: does not hold a RopeScaling dict"):
        rope.scaling_from_dict([1, 2])
    _, geom, target = make("smollm2-135m")
    text = json.dumps(registry_dict("longrope2", geom, target)).replace('"attention_factor": 1', '"attention_factor": Infinity, "x": 1', 1)
    with pytest.raises(ConfigError, match=r"^f.json: attention_factor: must be a finite number > 0, got inf$"):
        rope.scaling_from_dict(json.loads(text), "f.json")


def test_export_follows_factors_not_stored_hf_parameters():
    _, geom, target = make("smollm2-135m")
    d = registry_dict("longrope2", geom, target)
    del d["hf_rope_parameters"]  # absent: derived from the factors alone
    back = rope.scaling_from_dict(d)
    assert back.hf_rope_parameters["long_factor"] == d["long_factor"]
    assert back.hf_rope_parameters["attention_factor"] == d["attention_factor"]
    d["attention_factor"] = 1.25  # a longrope-form file may carry its own attention factor; the export follows it
    assert rope.scaling_from_dict(d).hf_rope_parameters["attention_factor"] == 1.25
