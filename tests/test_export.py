"""Export stage (stock HF checkpoints of every method) and greedy generation across L0."""

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config

from longrope2 import config as cfgmod
from longrope2 import models, rope
from longrope2.artifacts import sha256_path
from longrope2.errors import ConfigError
from longrope2.generation import greedy_generate, switch_length
from longrope2.stages import STAGES, export

from conftest import REPO, word_tokenizer

L0, TARGET, VOCAB = 32, 128, 97
METHODS = ("none", "pi", "ntk", "yarn", "longrope2")
KINDS = ("llama", "phi3")


def tiny_config(kind):
    # initializer_range 0.1 (not 0.02) so attention depends visibly on positions
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=L0, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                  initializer_range=0.1)
    if kind == "llama":
        return LlamaConfig(**common, head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return Phi3Config(**common, original_max_position_embeddings=L0,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})


GEOMETRY = {k: rope.RopeGeometry.from_hf_config(tiny_config(k), original_length=L0) for k in KINDS}


def scaling(kind, method):
    geom = GEOMETRY[kind]
    if method == "longrope2":  # switching: short factors 1, long factors != 1
        d_rcd = max(1, rope.critical_dim(geom) - 1)
        s = TARGET / L0
        return rope.longrope2(geom, TARGET, d_rcd, np.linspace(s, 1.7 * s, geom.n_pairs - d_rcd))
    return rope.METHODS[method](geom, TARGET)


def experiment_config(kind, tmp):
    geom = GEOMETRY[kind]
    override = tmp / f"override-{kind}.yaml"
    override.write_text(yaml.safe_dump({
        "experiment": {"name": f"export-{kind}"},
        "model": {"geometry": {"head_dim": geom.head_dim, "rope_base": geom.rope_base, "original_length": L0,
                               "partial_rotary_factor": geom.partial_rotary_factor}},
        "extension": {"target_length": TARGET},
    }))
    return override


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Base model folders, configs and factors files for both kinds and all methods."""
    root = tmp_path_factory.mktemp("export")
    tok = word_tokenizer(VOCAB)
    out = {}
    for kind in KINDS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(kind)).eval()
        base = root / f"base-{kind}"
        model.save_pretrained(base)
        tok.save_pretrained(base)
        override = experiment_config(kind, root)
        factors = {}
        for method in METHODS:
            factors[method] = root / f"factors-{kind}-{method}.json"
            # extra keys, as the search stage writes them, must not disturb the export
            factors[method].write_text(json.dumps(scaling(kind, method).to_dict() | {"fitness": {"nll": 1.5}}))
        out[kind] = {"base": base, "override": override, "factors": factors,
                     "cfg": cfgmod.load([REPO / "config/config.yaml", override])}
    return root, out


def run_export(work, kind, method, name=None):
    root, w = work
    dest = root / (name or f"out-{kind}-{method}")
    if not (dest / "manifest.json").exists():
        export.run(w[kind]["cfg"], str(dest), argparse.Namespace(model=str(w[kind]["base"]), factors=str(w[kind]["factors"][method])))
    return dest


@pytest.mark.parametrize("kind", KINDS)
def test_exported_checkpoint_equals_patched_model(work, kind):
    base = work[1][kind]["base"]
    patched, _ = models.load_pretrained(base, device="cpu", dtype=torch.float32)
    ids = torch.randint(4, VOCAB, (1, 100), generator=torch.Generator().manual_seed(1))
    for method in METHODS:
        out = run_export(work, kind, method)
        stock = AutoModelForCausalLM.from_pretrained(out / "model").eval()  # no trust_remote_code
        rope.apply_scaling(patched, scaling(kind, method))  # same loaded model, factors swapped in place
        for n in (24, 100):  # inside L0 (short factors) and beyond it (long factors)
            with torch.no_grad():
                a, b = patched(ids[:, :n]).logits, stock(ids[:, :n]).logits
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=f"{kind} {method} at length {n}")


@pytest.mark.parametrize("kind", KINDS)
def test_exported_config_and_rope_json(work, kind):
    geom = GEOMETRY[kind]
    for method in METHODS:
        out = run_export(work, kind, method)
        cfg = json.loads((out / "model" / "config.json").read_text())
        sc = scaling(kind, method)
        rp = cfg["rope_parameters"]
        assert cfg["max_position_embeddings"] == TARGET
        assert not cfg.get("auto_map")  # loads without remote code
        longrope_only = kind == "phi3" and method in ("pi", "yarn")
        if method == "longrope2" or longrope_only:
            assert rp["rope_type"] == "longrope"
            assert rp["original_max_position_embeddings"] == L0
            assert len(rp["long_factor"]) == len(rp["short_factor"]) == geom.n_pairs
            np.testing.assert_allclose(rp["long_factor"], sc.long_factor)
            np.testing.assert_allclose(rp["short_factor"], sc.short_factor)
            assert rp["attention_factor"] == pytest.approx(sc.attention_factor)
            assert (rp["long_factor"] != rp["short_factor"]) == (method == "longrope2")
        elif method == "pi":
            assert rp["rope_type"] == "linear" and rp["factor"] == pytest.approx(TARGET / L0)
        elif method == "yarn":
            assert rp["rope_type"] == "yarn" and rp["factor"] == pytest.approx(TARGET / L0)
            assert rp["original_max_position_embeddings"] == L0
        elif method == "ntk":
            assert rp["rope_type"] == "default"
            assert rp["rope_theta"] == pytest.approx(sc.extra["new_base"]) and rp["rope_theta"] > 1e4
        else:
            assert rp["rope_type"] == "default" and rp["rope_theta"] == 1e4
        if method != "ntk":
            assert rp["rope_theta"] == 1e4
        if kind == "phi3":
            assert cfg["original_max_position_embeddings"] == L0
            assert rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor")) == 0.5
        saved = json.loads((out / "rope.json").read_text())
        assert saved["fitness"] == {"nll": 1.5}
        back = rope.scaling_from_dict(saved)
        np.testing.assert_array_equal(back.long_factor, sc.long_factor)
        assert back.method == method and back.geometry == geom


def test_manifest_and_rerun_identical(work):
    root, w = work
    a = run_export(work, "llama", "longrope2")
    b = run_export(work, "llama", "longrope2", name="rerun")
    man_a, man_b = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert man_a["stage"] == "export" and man_a["method"] == "longrope2" and man_a["seed"] is None
    assert set(man_a["outputs"]) == {"model", "rope.json"}
    assert set(man_a["inputs"]) == {str(w["llama"]["base"]), str(w["llama"]["factors"]["longrope2"])}
    assert man_a["outputs"] == man_b["outputs"]  # byte-identical rerun
    assert (a / "model" / "model.safetensors").is_file() and (a / "model" / "tokenizer.json").is_file()


def test_export_links_the_base_weights(work):
    """An export is the base model's config with new rope parameters: no copy of the weights."""
    root, w = work
    out = run_export(work, "llama", "longrope2") / "model"
    weights = out / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (w["llama"]["base"] / "model.safetensors").resolve()
    assert not weights.readlink().is_absolute()  # relative: the results tree can move as a whole
    own = sum(f.lstat().st_size for f in out.iterdir() if not f.name.startswith("tokenizer") and f.name != "README.md")
    assert own < 1_000_000 and own < 0.01 * weights.stat().st_size
    assert not (out / "config.json").is_symlink()


@pytest.mark.parametrize("kind", KINDS)
def test_readme_only_for_switching_longrope_exports(work, kind):
    """A longrope2 export explains generation past L0 in model/README.md (a hashed output); PI gets none."""
    out = run_export(work, kind, "longrope2")
    readme = out / "model" / "README.md"
    assert readme.is_file() and not readme.is_symlink()
    text = readme.read_text()
    assert f"| {L0} |" in text and f"| {TARGET} |" in text  # original and target lengths
    assert f"{GEOMETRY[kind].n_pairs} per-pair factors" in text
    assert "greedy_generate(model, ids" in text and "LongContextLM" in text
    assert ("inexact" in text) == (kind == "llama")  # transformers recomputes the cache for Phi-3 itself
    man = json.loads((out / "manifest.json").read_text())
    assert man["outputs"]["model"] == sha256_path(out / "model")
    assert not (run_export(work, kind, "pi") / "model" / "README.md").exists()
    assert not (run_export(work, kind, "none") / "model" / "README.md").exists()


def test_export_readme_replaces_the_base_readme(work, tmp_path):
    """A base folder with its own README.md (a hub model card): longrope2 writes its own, PI links the base's."""
    root, w = work
    base = tmp_path / "base"
    shutil.copytree(w["llama"]["base"], base)
    (base / "README.md").write_text("model card\n")
    for method, own in (("longrope2", True), ("pi", False)):
        dest = tmp_path / method
        export.run(w["llama"]["cfg"], str(dest), argparse.Namespace(model=str(base), factors=str(w["llama"]["factors"][method])))
        readme = dest / "model" / "README.md"
        assert readme.is_symlink() != own
        assert (readme.read_text() == "model card\n") != own


def test_save_model_writes_the_readme(tmp_path):
    """Fine-tuned checkpoints (models.save_model) get the same README."""
    tok = word_tokenizer(VOCAB)
    for method in ("longrope2", "pi"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
        models.save_model(tmp_path / method, model, tok, scaling("llama", method))
    assert f"| {L0} |" in (tmp_path / "longrope2" / "README.md").read_text()
    assert not (tmp_path / "pi" / "README.md").exists()


def test_mismatched_or_missing_factors_are_reported(work, tmp_path):
    root, w = work
    cfg = w["llama"]["cfg"]
    bad = scaling("llama", "pi").to_dict()
    bad["geometry"]["rope_base"] = 500000.0
    bad["hf_rope_parameters"]["rope_theta"] = 500000.0  # a consistent file of another geometry
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"--factors: rope_base is 500000.0, model.geometry says 10000.0"):
        export.run(cfg, str(tmp_path / "o"), argparse.Namespace(model=str(w["llama"]["base"]), factors=str(path)))
    # factors of the phi3 geometry (8 pairs, partial rotary) against the llama model
    phi_cfg = w["phi3"]["cfg"]
    with pytest.raises(ConfigError, match="--model: partial_rotary_factor is 1.0"):
        export.run(phi_cfg, str(tmp_path / "o"), argparse.Namespace(model=str(w["llama"]["base"]),
                                                                  factors=str(w["phi3"]["factors"]["pi"])))
    with pytest.raises(ConfigError, match="--factors: file"):
        export.run(cfg, str(tmp_path / "o"), argparse.Namespace(model=str(w["llama"]["base"]), factors=str(tmp_path / "no.json")))
    path.write_text(json.dumps({"method": "pi"}))
    with pytest.raises(ConfigError, match="does not hold a RopeScaling dict"):
        export.run(cfg, str(tmp_path / "o"), argparse.Namespace(model=str(w["llama"]["base"]), factors=str(path)))
    assert not (tmp_path / "o" / "manifest.json").exists()


@pytest.mark.skipif(not any(s.NAME == export.NAME for s in STAGES),
                    reason="export stage not registered in longrope2/stages/__init__.py yet")
def test_cli_writes_manifest(work):
    from conftest import run_cli

    root, w = work
    out = root / "cli"
    proc = run_cli("export", "--config", REPO / "config/config.yaml", w["phi3"]["override"], "--model", w["phi3"]["base"],
                   "--factors", w["phi3"]["factors"]["longrope2"], "--out", out)
    assert "rope_type=longrope" in proc.stdout
    man = json.loads((out / "manifest.json").read_text())
    assert man["stage"] == "export" and set(man["outputs"]) == {"model", "rope.json"}
    assert man["config"] == {"model": {"geometry": w["phi3"]["cfg"]["model"]["geometry"]}}


# --------------------------------------------------------------------------------------------------
# Generation across L0
# --------------------------------------------------------------------------------------------------


def reference_greedy(model, ids, new_tokens):
    """No cache: a full forward over the whole sequence at every step, argmax of the last logits."""
    logits = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logits.append(model(ids).logits[:, -1])
            ids = torch.cat([ids, logits[-1].argmax(-1, keepdim=True)], dim=1)
    return ids, logits


def stock_greedy(model, ids, new_tokens):
    model.generation_config.eos_token_id = None  # random weights: never stop early
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, list(out.logits)


def max_diffs(a, b):
    return [float((x - y).abs().max()) for x, y in zip(a, b)]


@pytest.fixture(scope="module")
def exported(work):
    def load(kind, method):
        return AutoModelForCausalLM.from_pretrained(run_export(work, kind, method) / "model").eval()

    return load


def prompt(batch, length, seed=3):
    return torch.randint(4, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_greedy_generate_crossing_L0_equals_full_forward(exported):
    model = exported("llama", "longrope2")
    assert switch_length(model) == L0
    ids = prompt(2, 28)  # 28 prompt + 12 new: crosses L0 = 32 at the 6th step
    ref, ref_logits = reference_greedy(model, ids, 12)
    out, logits = greedy_generate(model, ids, 12, output_scores=True)
    assert torch.equal(out, ref)
    assert max(max_diffs(logits, ref_logits)) < 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_stock_generate_past_L0_llama_wrong_phi3_right(exported, kind):
    """transformers recomputes the cache at L0 only for Phi-3; Llama keeps short-rotated cached keys."""
    model = exported(kind, "longrope2")
    ids = prompt(2, 28)
    ref, ref_logits = reference_greedy(model, ids, 12)
    stock, stock_logits = stock_greedy(model, ids, 12)
    diffs = max_diffs(stock_logits, ref_logits)
    print(f"{kind}: stock generate vs full forward, max |logit diff| per step: {[f'{d:.2e}' for d in diffs]}")
    cross = L0 - ids.shape[1] + 1  # first step whose sequence (prompt + generated) exceeds L0
    assert max(diffs[:cross]) < 1e-4  # inside L0 the cache is consistent
    assert torch.equal(stock[:, :ids.shape[1] + cross], ref[:, :ids.shape[1] + cross])
    if kind == "llama":
        assert diffs[cross] > 1e-3  # same prefix, first step past L0: already wrong
    else:
        assert max(diffs) < 1e-4 and torch.equal(stock, ref)
        assert torch.equal(greedy_generate(model, ids, 12), ref)


@pytest.mark.parametrize("length, new_tokens", [(40, 8), (10, 12)])  # already past L0 / never reaching it
def test_greedy_generate_equals_stock_when_not_crossing(exported, length, new_tokens):
    model = exported("llama", "longrope2")
    ids = prompt(2, length, seed=4)
    stock, stock_logits = stock_greedy(model, ids, new_tokens)
    out, logits = greedy_generate(model, ids, new_tokens, output_scores=True)
    assert torch.equal(out, stock)
    assert max(max_diffs(logits, stock_logits)) < 1e-4


def test_greedy_generate_stops_at_eos_and_non_switching_models(exported):
    model = exported("llama", "pi")
    assert switch_length(model) is None
    ids = prompt(1, 20)
    ref, _ = reference_greedy(model, ids, 16)
    assert torch.equal(greedy_generate(model, ids, 16), ref)  # crosses L0, nothing to recompute
    eos = int(ref[0, 23])
    first = int((ref[0, 20:] == eos).nonzero()[0])
    out = greedy_generate(model, ids, 16, eos_token_id=eos)
    assert torch.equal(out, ref[:, :20 + first + 1])
