"""Scale-model pretraining on the micro config: HF folder output, learning curve, kill-and-resume."""

import json
import signal
import subprocess
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import BIN, REPO, run_cli

MICRO = REPO / "tests" / "micro.yaml"


@pytest.fixture(scope="module")
def micro_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro") / "corpus"
    run_cli("corpus", "--config", REPO / "config/config.yaml", MICRO, "--out", out)
    return out


def longer(tmp_path, steps):
    p = tmp_path / "longer.yaml"
    p.write_text(yaml.safe_dump({"pretrain": {"steps": steps, "checkpoint_every": 4, "eval_every": 100}}))
    return [REPO / "config/config.yaml", MICRO, p]


def test_pretrain_writes_loadable_model_and_curve(tmp_path, micro_corpus):
    out = tmp_path / "base_model"
    run_cli("pretrain", "--config", REPO / "config/config.yaml", MICRO, "--corpus", micro_corpus, "--out", out,
            "--checkpoint-dir", tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.model_type == "llama" and model.config.head_dim == 16
    assert model.config.rope_parameters["rope_theta"] == 10000.0 and model.config.max_position_embeddings == 256
    assert len(tok) == model.config.vocab_size
    curve = (out / "pretrain_curve.csv").read_text().splitlines()
    assert curve[0] == "step,wall_s,tokens,acc_single,acc_multi" and curve[-1].startswith("12,")
    summary = json.loads((out / "pretrain.json").read_text())
    assert summary["steps"] == 12 and summary["tokens"] > 0
    assert not (tmp_path / "ckpt" / "last.pt").exists()  # removed after a completed run


def test_kill_and_resume_ends_with_the_same_weights(tmp_path, micro_corpus):
    cfg = longer(tmp_path, 40)
    ref = tmp_path / "ref"
    run_cli("pretrain", "--config", *cfg, "--corpus", micro_corpus, "--out", ref, "--checkpoint-dir", tmp_path / "c1")
    ckdir = tmp_path / "c2"
    args = [str(BIN / "longrope2"), "pretrain", "--config", *map(str, cfg), "--corpus", str(micro_corpus),
            "--out", str(tmp_path / "resumed"), "--checkpoint-dir", str(ckdir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (ckdir / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "resumed" / "model").exists()  # a killed stage leaves no artifact
    second = run_cli("pretrain", "--config", *cfg, "--corpus", micro_corpus, "--out", tmp_path / "resumed",
                     "--checkpoint-dir", ckdir)
    assert "resuming from step" in second.stdout + second.stderr
    a = load_file(ref / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
