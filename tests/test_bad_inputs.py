"""Bad input never runs to a silent wrong result: each case below stops the stage with one line that
names the file or field (and what is allowed), exit status 2, and no artifact left behind."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from longrope2 import cli, rope
from longrope2.artifacts import StageRun

from conftest import REPO

GEOM = rope.RopeGeometry(head_dim=32, rope_base=10000.0, original_length=256)  # the tiny test model's geometry


def pinned_default():
    """The default config with the tiny test model's geometry (32-dim heads, 256 -> 1024)."""
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["model"]["geometry"].update(head_dim=GEOM.head_dim, rope_base=GEOM.rope_base, original_length=GEOM.original_length)
    cfg["extension"]["target_length"] = 1024
    cfg["pretrain"].pop("curriculum", None)
    cfg["evaluation"]["ruler"].pop("samples_at", None)
    path = Path(tempfile.mkdtemp(prefix="bad_inputs_config_")) / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


DEFAULT = pinned_default()


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_llama, tiny_corpus):
    """A base model made by a stage (with its manifest), factor files, corpora and configs to break."""
    root = tmp_path_factory.mktemp("bad_inputs")
    model, tok = tiny_llama
    with StageRun("pretrain", root / "base", {}) as run_:  # a manifest, as the pretrain stage writes one
        model.save_pretrained(run_.path("model"))
        tok.save_pretrained(run_.path("model"))
    nan_model = root / "nan_model"
    broken = type(model)(model.config)
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(float("nan"))
    broken.save_pretrained(nan_model)
    tok.save_pretrained(nan_model)
    with StageRun("search", root / "search", {}) as run_:
        run_.write_json("factors.json", rope.build("longrope2", GEOM, 1024).to_dict())
    small = root / "small.yaml"
    small.write_text(yaml.safe_dump({"extension": {"target_length": 512},
                                     "needles": {"eval_samples": 1, "ppl_samples": 1, "eval_length_multiples": [1]}}))
    return {"root": root, "base": root / "base" / "model", "nan_model": nan_model, "corpus": tiny_corpus,
            "searched": root / "search" / "factors.json", "small": small}


def write(env, name, content):
    path = env["root"] / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    return path


def pi_factors(**change):
    d = rope.build("pi", GEOM, 1024).to_dict()
    d.update(change)
    return d


def longrope2_factors(**change):
    d = rope.build("longrope2", GEOM, 1024).to_dict()
    d.update(change)
    return d


def config_case(text):
    return lambda env: ["critical-dims", "--config", DEFAULT, write(env, "bad.yaml", text)]


def json_case(obj):
    return lambda env: ["critical-dims", "--config-json", obj if isinstance(obj, str) else json.dumps(obj)]


def export_case(factors):
    return lambda env: ["export", "--config", DEFAULT, "--model", env["base"], "--factors",
                        write(env, "factors.json", factors)]


def corpus_case(files, field="text"):
    def build(env):
        docs = env["root"] / "docs"
        docs.mkdir(exist_ok=True)
        for old in docs.iterdir():
            old.unlink()
        for name, content in files.items():
            (docs / name).write_bytes(content)
        over = write(env, "corpus.yaml", yaml.safe_dump({"corpus": {"source": "text_dir", "path": str(docs), "field": field}}))
        return ["corpus", "--config", DEFAULT, over]
    return build


def flipped_weights(env):
    """8 bytes of the stage-made base model's weights flipped after its manifest was written."""
    weights = env["base"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:-56] = bytes(b ^ 0xFF for b in data[-64:-56])
    corrupt = env["root"] / "corrupt"
    if not corrupt.exists():
        import shutil

        shutil.copytree(env["base"].parent, corrupt)
        (corrupt / "model" / "model.safetensors").write_bytes(bytes(data))
    return ["evaluate", "--config", DEFAULT, env["small"], "--model", corrupt / "model", "--corpus", env["corpus"],
            "--label", "x"]


def edited_factors(env):
    """A searched factors.json edited by hand after the search stage recorded its hash."""
    edited = env["root"] / "edited"
    if not edited.exists():
        import shutil

        shutil.copytree(env["searched"].parent, edited)
        d = json.loads((edited / "factors.json").read_text())
        d["fitness"] = {"nll": 0.1}
        (edited / "factors.json").write_text(json.dumps(d))
    return ["export", "--config", DEFAULT, "--model", env["base"], "--factors", edited / "factors.json"]


CASES = {
    # config files
    "yaml-syntax": (config_case("extension: [1, 2\n"), "--config: ", "is not valid YAML"),
    "yaml-top-level-list": (config_case("- a\n- b\n"), "--config: ", "must hold a mapping of sections"),
    "yaml-not-utf8": (lambda env: ["critical-dims", "--config", DEFAULT, write(env, "latin.yaml", b"name: caf\xe9\n")],
                      "--config: ", "is not UTF-8 text"),
    "config-missing": (lambda env: ["critical-dims", "--config", DEFAULT, env["root"] / "nope.yaml"], "--config: ",
                       "does not exist"),
    "rope-base-nan": (config_case("model:\n  geometry: {rope_base: .nan}\n"), "model.geometry.rope_base: ",
                      "must be a finite number, got nan"),
    "rope-base-inf": (config_case("model:\n  geometry: {rope_base: .inf}\n"), "model.geometry.rope_base: ",
                      "must be a finite number, got inf"),
    "target-below-l0": (config_case("extension: {target_length: 128}\n"), "extension.target_length: ", "must be above"),
    "unknown-key": (config_case("extension: {target: 2048}\n"), "extension.target: ", "unknown key; allowed keys here"),
    "unknown-method": (config_case("extension: {methods: [pi, alibi]}\n"), "extension.methods.1: ", "allowed: pi,"),
    "finetune-method-not-built": (config_case("extension: {methods: [pi, longrope2]}\nfinetune: {methods: [yarn]}\n"),
                                  "finetune.methods.0: ", "does not build; allowed: pi, longrope, longrope2 "),
    "unknown-search": (config_case("search: {methods: [longrope2, longrope3]}\n"), "search.methods.1: ",
                       "allowed: longrope, longrope2"),
    "negative-seed": (config_case("experiment: {seed: -1}\n"), "experiment.seed: ", "must be minimum 0"),
    "odd-head-dim": (config_case("model:\n  geometry: {head_dim: 15}\n"), "model.geometry.head_dim: ",
                     "positive even integer"),
    # a rule's config subset
    "config-json-syntax": (json_case("{model: 1}"), "--config-json: ", "not valid JSON"),
    "config-json-extra-key": (json_case({"model": {"geometry": {"head_dim": 32, "rope_base": 1e4, "original_length": 256}},
                                         "extension": {"target_length": 1024}, "critical_dims": {}, "seed": 1}),
                              "--config-json: ", "holds keys this stage does not read"),
    "config-json-missing-key": (json_case({"extension": {"target_length": 1024}, "critical_dims": {}}),
                                "--config-json: ", "missing key model.geometry"),
    "config-json-bad-value": (json_case({"model": {"geometry": {"head_dim": 32, "rope_base": 1e4, "original_length": 256}},
                                         "extension": {"target_length": "long"}, "critical_dims": {}}),
                              "extension.target_length: ", "must be of type integer"),
    # factor files
    "factor-nan": (export_case(pi_factors(long_factor=[float("nan")] + [4.0] * 15)), "factors.json: long_factor[0]: ",
                   "must be a finite number > 0, got nan"),
    "factor-negative": (export_case(pi_factors(long_factor=[4.0] * 15 + [-4.0])), "factors.json: long_factor[15]: ",
                        "must be a finite number > 0"),
    "factor-zero": (export_case(pi_factors(short_factor=[0.0] * 16)), "factors.json: short_factor[0]: ",
                    "must be a finite number > 0"),
    "factor-length": (export_case(pi_factors(long_factor=[4.0] * 15)), "factors.json: long_factor: ", "need 16"),
    "factor-d-rcd": (export_case(longrope2_factors(d_rcd=16)), "factors.json: d_rcd: ", "[1, 15]"),
    "factor-hf-disagrees": (export_case(pi_factors(hf_rope_parameters={"rope_type": "linear", "factor": 8.0,
                                                                       "rope_theta": 10000.0})),
                            "factors.json: hf_rope_parameters.factor: ", "derived from the factors"),
    "factor-not-json": (export_case("{'method': 'pi'}"), "--factors: ", "is not valid JSON"),
    "factor-missing": (lambda env: ["export", "--config", DEFAULT, "--model", env["base"], "--factors",
                                    env["root"] / "none.json"], "--factors: ", "none.json does not exist"),
    "factor-other-geometry": (export_case(rope.build("pi", rope.RopeGeometry(32, 5e5, 256), 1024).to_dict()),
                              "--factors: ", "rope_base is 500000.0, model.geometry says 10000.0"),
    "rcd-without-searched": (lambda env: ["baseline", "--config", DEFAULT, "--method", "ntk_rcd"], "--searched: ",
                             "needs the LongRoPE2 search"),
    # input artifacts
    "model-not-a-folder": (lambda env: ["export", "--config", DEFAULT, "--model", env["root"], "--factors",
                                        env["searched"]], "--model: ", "not a model folder"),
    "weights-flipped": (flipped_weights, "corrupt/model: ", "changed or corrupt since its stage wrote it"),
    "factors-edited": (edited_factors, "factors.json: ", "changed or corrupt since its stage wrote it"),
    "nan-metric": (lambda env: ["evaluate", "--config", DEFAULT, env["small"], "--model", env["nan_model"], "--corpus",
                                env["corpus"], "--label", "x"], "needle_ppl at length 256 ", "is NaN"),
    # corpora
    "corpus-not-utf8": (corpus_case({"a.jsonl": b'{"text": "caf\xe9"}\n'}), "corpus.path: ", "not UTF-8 text"),
    "corpus-bad-json-line": (corpus_case({"a.jsonl": b'{"text": "ok"}\n{"text": \n'}), "corpus.path: ",
                             "a.jsonl:2: not a JSON record"),
    "corpus-missing-field": (corpus_case({"a.jsonl": b'{"body": "x"}\n'}), "corpus.field: ", "has no field 'text'"),
    "corpus-no-files": (corpus_case({"a.csv": b"x,y\n"}), "corpus.path: ", "holds no .txt or .jsonl files"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(case, env, tmp_path, capsys):
    build, where, what = CASES[case]
    out = tmp_path / "out"
    argv = [str(a) for a in build(env)] + ["--out", str(out)]
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]  # not progress bars
    assert len(lines) == 1, lines
    message = lines[0].split(": error: ", 1)[1]
    assert where in message and what in message, message
    assert not (out / "manifest.json").exists() and not [p for p in out.glob("*") if not p.name.startswith(".")]


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_overflowing_ppl_is_valid_json_and_infinity_in_tables(tmp_path):
    from longrope2.stages import tables

    with StageRun("evaluate", tmp_path / "m", {}) as run_:
        run_.write_json("metrics.json", {"method": "pi", "stage": "training-free",
                                         "lengths": {"256": {"needle_acc": 0.0, "needle_ppl": float("inf"), "ppl": 3.0}}})
    text = (tmp_path / "m" / "metrics.json").read_text()
    assert json.loads(text)["lengths"]["256"]["needle_ppl"] == "inf" and "Infinity" not in text
    df = tables.collect([str(tmp_path / "m" / "metrics.json")])
    assert np.isinf(df["needle_ppl"][0]) and "| ∞ |" in tables.markdown(df)
