"""Config validation: bad values fail before any work with one line naming the key and what is allowed."""


import pytest
import yaml

from longrope2 import config
from longrope2.errors import ConfigError

from conftest import REPO, run_cli

EXPERIMENTS = sorted((REPO / "config" / "experiments").glob("*.yaml"))


def load_with(tmp_path, override):
    p = tmp_path / "override.yaml"
    p.write_text(yaml.safe_dump(override))
    return config.load([REPO / "config" / "config.yaml", p])


def test_default_and_shipped_experiments_validate():
    names = {config.load([REPO / "config/config.yaml", e])["experiment"]["name"] for e in EXPERIMENTS}
    assert {"smollm2-32k", "smollm2-32k-smoke", "llama3-8b-128k", "phi3-mini-128k", "paper", "copy-only", "needle-recall"} <= names
    cfg = config.load([REPO / "config/config.yaml"])
    assert cfg["experiment"]["name"] == "scale" and cfg["extension"]["target_length"] > cfg["model"]["geometry"]["original_length"]


@pytest.mark.parametrize(
    "override, key, allowed",
    [
        ({"model": {"source": "torrent"}}, "model.source", "allowed: scale, hub, local, gguf"),
        ({"extension": {"methods": ["pi", "alibi"]}}, "extension.methods.1", "allowed: pi, ntk_static"),
        ({"extension": {"target_length": 128}}, "extension.target_length", "must be above"),
        ({"model": {"geometry": {"head_dim": "sixty"}}}, "model.geometry.head_dim", "type integer"),
        ({"experiment": {"colour": "red"}}, "experiment.colour", "unknown key; allowed keys here: name, seed"),
        ({"experiment": {"name": "a b"}}, "experiment.name", "must match"),
        ({"evaluation": {"ruler": {"training_free": ["ntk_static"]}}}, "evaluation.ruler.training_free",
         "allowed: none, pi, ntk, yarn"),  # a registry name this experiment does not build
        ({"pretrain": {"warmup": {"kind": "needle", "length": 64, "until_loss": 0.05, "max_steps": 10}}},
         "pretrain.warmup.kind", "allowed: copy, recall"),
        ({"pretrain": {"warmup": {"kind": "copy", "span": "random", "length": 64, "until_loss": 0.05, "max_steps": 10}}},
         "pretrain.warmup.span", "allowed: fixed, varied"),
        ({"pretrain": {"warmup": {"kind": "recall", "keys": "emoji", "length": 64, "until_loss": 0.3, "max_steps": 10}}},
         "pretrain.warmup.keys", "allowed: random, words"),
        ({"pretrain": {"curriculum": [{"from_step": 0, "kind": "recall", "length": 64, "values": "hex"}]}},
         "pretrain.curriculum.0.values", "allowed: token, digits, uuid"),
        ({"pretrain": {"warmup": [{"kind": "copy", "length": 64, "until_loss": 0.05, "max_steps": 10},
                                  {"kind": "sort", "length": 64, "until_loss": 0.05, "max_steps": 10}]}},
         "pretrain.warmup.1.kind", "allowed: copy, recall"),  # a phase of a list is checked like a single one
    ],
)
def test_bad_values_name_the_key(tmp_path, override, key, allowed):
    with pytest.raises(ConfigError) as exc:
        load_with(tmp_path, override)
    msg = str(exc.value)
    assert msg.startswith(f"{key}: ") and allowed in msg and "\n" not in msg


def test_cli_bad_config_is_one_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  source: torrent\n")
    out = tmp_path / "out"
    proc = run_cli("critical-dims", "--config", REPO / "config/config.yaml", bad, "--out", out, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.source" in lines[0] and "allowed: scale, hub, local, gguf" in lines[0]
    assert not out.exists()


def test_later_files_override_earlier_ones(tmp_path):
    cfg = load_with(tmp_path, {"extension": {"target_length": 4096}})
    assert cfg["extension"]["target_length"] == 4096
    assert cfg["model"]["geometry"]["original_length"] == 512  # untouched keys survive the merge
    assert config.config_hash({"a": 1, "b": 2}) == config.config_hash({"b": 2, "a": 1})


def test_ruler_training_free_rows_keep_the_base(tmp_path):
    from longrope2 import methods

    default = config.load([REPO / "config/config.yaml"])
    assert methods.ruler_training_free(default) == ["none"]  # the default scores only the base before fine-tuning
    assert methods.ruler_training_free(load_with(tmp_path, {"evaluation": {"ruler": {"training_free": ["yarn"]}}})) \
        == ["none", "yarn"]  # retention needs the base
    every = load_with(tmp_path, {"evaluation": {"ruler": {"training_free": None}}})
    assert methods.ruler_training_free(every) == methods.training_free(every)


def test_default_is_lean_and_the_paper_experiment_adds_every_ablation(tmp_path):
    """The default's rows answer the four findings; the rcd baselines and the all-pairs search are the paper
    experiment's (and any experiment's that leaves extension.rcd_baselines at its schema default)."""
    from longrope2 import methods

    default = config.load([REPO / "config/config.yaml"])
    assert methods.training_free(default) == ["none", "pi", "ntk", "yarn", "longrope", "longrope2", "longrope2_plain_ppl"]
    paper = config.load([REPO / "config/config.yaml", REPO / "config/experiments/paper.yaml"])
    assert methods.training_free(paper) == ["none", "pi", "ntk", "yarn", "ntk_rcd", "yarn_rcd", "longrope", "longrope2",
                                            "longrope2_plain_ppl", "longrope2_all_pairs"]
    assert set(methods.training_free(load_with(tmp_path, {"extension": {"rcd_baselines": True}}))) \
        - set(methods.training_free(default)) == {"ntk_rcd", "yarn_rcd"}
    with pytest.raises(ConfigError, match="extension.rcd_baselines"):
        load_with(tmp_path, {"extension": {"rcd_baselines": "yes"}})


def test_pretrain_warmup_is_optional_and_null_turns_it_off(tmp_path):
    """A warm-up gets its window default; null (a later file's way to drop an earlier file's warm-up) means none."""
    warm = {"kind": "copy", "span": "varied", "length": 64, "until_loss": 0.05, "max_steps": 10}
    assert load_with(tmp_path, {"pretrain": {"warmup": warm}})["pretrain"]["warmup"] == {**warm, "window": 20}
    assert load_with(tmp_path, {"pretrain": {"warmup": None}})["pretrain"]["warmup"] is None
    recall = {"kind": "recall", "length": 65, "until_loss": 0.5, "max_steps": 10}
    assert load_with(tmp_path, {"pretrain": {"warmup": [warm, recall]}})["pretrain"]["warmup"] == \
        [{**warm, "window": 20}, {**recall, "window": 20}]  # each phase of a list gets the default
