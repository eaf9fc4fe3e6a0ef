"""Released and already-extended checkpoints as rows: ``fixed_factors`` (published LongRoPE2 factors) and
``as_is`` (a checkpoint's own rope parameters), through the baseline and export stages; the factor-shape
figure; their rows in the shipped experiments' DAGs."""

import argparse
import json
import math

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

from longrope2 import config as cfgmod
from longrope2 import published, rope
from longrope2.errors import ConfigError
from longrope2.stages import baselines, export, factor_shape

from conftest import REPO, snakemake, word_tokenizer

VOCAB = 97
DEFAULT = ["pi", "ntk", "yarn", "longrope", "longrope2"]  #: extension.methods of config/config.yaml


def tiny(kind, p=None, **rope_keys):
    """A 1-layer model with the published geometry (Llama-3-8B's or Phi-4-mini's rotary heads)."""
    common = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1)
    if kind == "llama":
        return LlamaConfig(**common, head_dim=128, max_position_embeddings=p.original_length,
                           rope_parameters={"rope_type": "default", "rope_theta": p.rope_base})
    return Phi3Config(**common, **rope_keys)


def save(config, folder):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    word_tokenizer(VOCAB).save_pretrained(folder)
    return folder


def experiment(tmp_path, geometry, target, **extension):
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"experiment": {"name": "published"}, "model": {"geometry": geometry},
                                        "extension": {"target_length": target, **extension}}))
    return cfgmod.load([REPO / "config/config.yaml", override])


def stage_cfg(cfg, stage, method=None):
    keys = baselines.config_keys(method) if stage is baselines else stage.CONFIG_KEYS
    return cfgmod.subset(cfg, keys)


def rotary(model_dir, n):
    """cos, sin of stock transformers' rotary module of a saved checkpoint for positions 0 .. n-1 (n > L0: the
    long factors, else the short ones), and its attention scaling."""
    rot = AutoModelForCausalLM.from_pretrained(model_dir).model.rotary_emb
    cos, sin = rot(torch.zeros(1, dtype=torch.float32), torch.arange(n)[None])
    return cos, sin, rot.attention_scaling


@pytest.mark.parametrize("name", list(published.PUBLISHED))
def test_published_sets_have_the_longrope2_shape(name):
    p = published.PUBLISHED[name]
    lam = np.asarray(p.long_factor)
    assert len(lam) == len(p.short_factor) == int(p.head_dim * p.partial_rotary_factor) // 2
    assert set(p.short_factor) == {1.0}
    np.testing.assert_allclose(lam[:p.d_rcd], lam[p.d_rcd] ** (np.arange(p.d_rcd) / p.d_rcd), rtol=1e-8)
    assert lam[p.d_rcd] >= p.target_length / p.original_length  # searched pairs: at least s
    assert p.source.startswith("https://")


@pytest.mark.parametrize("name, kind", [("llama3-8b-longrope2", "llama"), ("phi4-mini-instruct", "phi3")])
def test_export_config_equals_the_published_one(tmp_path, name, kind):
    p = published.PUBLISHED[name]
    cfg = experiment(tmp_path, p.geometry, p.target_length, methods=[*DEFAULT, "fixed_factors"], fixed_factors=name)
    if kind == "llama":
        config = tiny("llama", p)
    else:
        config = tiny("phi3", max_position_embeddings=p.original_length, original_max_position_embeddings=p.original_length,
                      rope_parameters={"rope_type": "default", "rope_theta": p.rope_base,
                                       "partial_rotary_factor": p.partial_rotary_factor})
    base = save(config, tmp_path / "base")
    baselines.run(stage_cfg(cfg, baselines, "fixed_factors"), str(tmp_path / "factors"),
                  argparse.Namespace(method="fixed_factors", searched=None, model=None))
    factors = json.loads((tmp_path / "factors" / "factors.json").read_text())
    assert factors["published"] == name and factors["source"] == p.source and factors["d_rcd"] == p.d_rcd
    export.run(stage_cfg(cfg, export), str(tmp_path / "export"),
               argparse.Namespace(model=str(base), factors=str(tmp_path / "factors" / "factors.json")))
    out = json.loads((tmp_path / "export" / "model" / "config.json").read_text())
    rp = out["rope_parameters"]
    assert rp["rope_type"] == "longrope"
    assert rp["long_factor"] == list(p.long_factor) and rp["short_factor"] == list(p.short_factor)
    assert rp["original_max_position_embeddings"] == p.original_length
    assert out["max_position_embeddings"] == p.target_length
    assert rp["rope_theta"] == p.rope_base
    # no attention factor is published: transformers' longrope default
    s = p.target_length / p.original_length
    assert rp["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(s) / math.log(p.original_length)), rel=1e-12)
    # what stock transformers builds from the export equals what it builds from the released config
    released = save(config, tmp_path / "released")  # the base model with the released config's RoPE keys
    conf = json.loads((released / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor"):
        conf.pop(key, None)
    (released / "config.json").write_text(json.dumps({**conf, **p.released_config()}))
    for n in (p.original_length, p.original_length + 1):  # short factors, then long ones
        want, have = rotary(released, n), rotary(tmp_path / "export" / "model", n)
        assert have[2] == pytest.approx(want[2], rel=1e-12)
        torch.testing.assert_close(have[:2], want[:2], rtol=0, atol=0)


@pytest.mark.parametrize("value, message", [
    ("llama3-70b", "extension.fixed_factors: got 'llama3-70b'; allowed: llama3-8b-longrope2, phi4-mini-instruct"),
    (None, "extension.fixed_factors: is null; the fixed_factors method needs a published set, allowed: "),
    ("phi4-mini-instruct", "extension.fixed_factors: phi4-mini-instruct was published for microsoft/Phi-4-mini-instruct "
                           "(LongRoPE2, 4k -> 128k) with head_dim = 128; this experiment has model.geometry.head_dim = 64"),
])
def test_bad_selector_is_one_line(tmp_path, value, message):
    with pytest.raises(ConfigError) as e:
        experiment(tmp_path, {"head_dim": 64, "rope_base": 10000, "original_length": 4096}, 131072,
                   methods=[*DEFAULT, "fixed_factors"], fixed_factors=value)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_as_is_on_the_scale_model_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"^extension.as_is: the scale model has no rope scaling of its own"):
        experiment(tmp_path, {"head_dim": 64, "rope_base": 1000, "original_length": 512}, 2048,
                   methods=[*DEFAULT, "as_is"])


def phi3_128k_like(l0=64, window=512, short=None):
    """A tiny Phi-3-mini-128k-style checkpoint: longrope with its own short and long factors, L0 = 64."""
    n = 16  # head_dim 128 x partial rotary 0.25
    long = list(np.linspace(1.0, 9.0, n))
    short = short or list(np.linspace(1.0, 1.3, n))
    return tiny("phi3", max_position_embeddings=window, original_max_position_embeddings=l0,
                rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                                 "long_factor": long, "short_factor": short})


def test_as_is_evaluates_the_checkpoint_unchanged(tmp_path):
    ckpt = save(phi3_128k_like(), tmp_path / "ckpt")
    # the experiment's L0 (32) is not the checkpoint's (64): as_is keeps the checkpoint's own
    cfg = experiment(tmp_path, {"head_dim": 128, "rope_base": 10000, "original_length": 32,
                                "partial_rotary_factor": 0.25}, 256, methods=[*DEFAULT, "as_is"],
                     as_is={"source": "local", "id": str(ckpt)})
    baselines.run(stage_cfg(cfg, baselines, "as_is"), str(tmp_path / "factors"),
                  argparse.Namespace(method="as_is", searched=None, model=str(ckpt)))
    factors = json.loads((tmp_path / "factors" / "factors.json").read_text())
    assert factors["checkpoint_rope_type"] == "longrope" and factors["geometry"]["original_length"] == 64
    assert factors["target_length"] == 512
    export.run(stage_cfg(cfg, export), str(tmp_path / "export"),
               argparse.Namespace(model=str(ckpt), factors=str(tmp_path / "factors" / "factors.json")))
    own = json.loads((ckpt / "config.json").read_text())
    out = json.loads((tmp_path / "export" / "model" / "config.json").read_text())
    for key in ("long_factor", "short_factor"):
        assert out["rope_parameters"][key] == pytest.approx(own["rope_parameters"][key], rel=1e-15)
    assert out["original_max_position_embeddings"] == 64 and out["max_position_embeddings"] == 512
    ids = torch.randint(4, VOCAB, (1, 100), generator=torch.Generator().manual_seed(1))
    a = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "model").eval()
    for n in (40, 100):  # inside and beyond the checkpoint's L0
        with torch.no_grad():
            torch.testing.assert_close(b(ids[:, :n]).logits, a(ids[:, :n]).logits, rtol=0, atol=0)


def test_as_is_refuses_a_checkpoint_without_scaling(tmp_path):
    config = tiny("phi3", max_position_embeddings=512, original_max_position_embeddings=512,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
    ckpt = save(config, tmp_path / "ckpt")
    cfg = experiment(tmp_path, {"head_dim": 128, "rope_base": 10000, "original_length": 32,
                                "partial_rotary_factor": 0.25}, 256)
    with pytest.raises(ConfigError, match=r"^as_is: the checkpoint has no rope scaling of its own"):
        baselines.run(stage_cfg(cfg, baselines, "as_is"), str(tmp_path / "factors"),
                      argparse.Namespace(method="as_is", searched=None, model=str(ckpt)))


def test_factor_shape_of_a_longrope2_search(tmp_path):
    geom = rope.RopeGeometry(64, 100000.0, 8192)
    s = 4.0
    d_rcd = 18
    scaling = rope.longrope2(geom, 32768, d_rcd, np.linspace(1.1 * s, 1.4 * s, geom.n_pairs - d_rcd))
    (tmp_path / "factors.json").write_text(json.dumps(scaling.to_dict()))
    cfg = experiment(tmp_path, {"head_dim": 64, "rope_base": 100000, "original_length": 8192}, 32768)
    factor_shape.run(stage_cfg(cfg, factor_shape), str(tmp_path / "shape"),
                     argparse.Namespace(factors=str(tmp_path / "factors.json")))
    result = json.loads((tmp_path / "shape" / "factor_shape.json").read_text())
    sm = result["summary"]
    assert sm["d_rcd"] == d_rcd and sm["below_max_rel_dev_from_ntk_fill"] < 1e-12
    assert sm["searched_at_least_s"] and sm["searched_nondecreasing"]
    assert sm["searched_over_s"]["min"] == pytest.approx(1.1) and sm["searched_over_s"]["max"] == pytest.approx(1.4)
    assert [p["region"] for p in result["pairs"]].index("searched") == d_rcd
    assert (tmp_path / "shape" / "factor_shape.png").stat().st_size > 10_000


@pytest.mark.parametrize("experiment_file, rows", [
    ("llama3-8b-128k.yaml", ["baseline_fixed_factors", "export_fixed_factors", "evaluate_training_free_fixed_factors",
                             "ruler_training_free_fixed_factors"]),
    ("phi3-mini-128k.yaml", ["import_as_is", "baseline_as_is", "export_as_is", "evaluate_training_free_as_is",
                             "ruler_training_free_as_is"]),
])
def test_dry_run_includes_the_rows(workdir, experiment_file, rows):
    proc = snakemake("-n", "--configfile", f"config/experiments/{experiment_file}", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in rows:
        assert f"{row}.log" in proc.stdout, row
    assert "factor_shape.png" in proc.stdout


def test_dry_run_bad_selector_is_one_line(workdir):
    (workdir / "bad.yaml").write_text("extension:\n  methods: [longrope2, fixed_factors]\n  fixed_factors: llama3\n")
    proc = snakemake("-n", "--configfile", "config/experiments/llama3-8b-128k.yaml", "bad.yaml", cwd=workdir)
    assert proc.returncode != 0
    assert ("invalid config: extension.fixed_factors: got 'llama3'; allowed: llama3-8b-longrope2, "
            "phi4-mini-instruct") in proc.stdout + proc.stderr
