"""Mixed context window fine-tuning: packing, per-row RoPE, chunked loss, resume, DDP/FSDP with 2 processes."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from longrope2 import rope
from longrope2.corpus import TokenizedCorpus
from longrope2.packing import Packer, RowSpec
from longrope2.stages.finetune import CausalLMLoss

from conftest import BIN, REPO, run_cli

MICRO = REPO / "tests" / "micro.yaml"
L0, L = 64, 256


@pytest.fixture(scope="module")
def packer(tiny_corpus, tiny_llama):
    _, tok = tiny_llama
    return Packer(TokenizedCorpus(tiny_corpus, "train"), RowSpec(L, L0, 0.5, seed=3), tok.bos_token_id)


def segments(pos):
    starts = np.flatnonzero(np.diff(pos) != 1) + 1
    return np.split(np.arange(len(pos)), starts)


def test_rows_short_and_long(packer, tiny_llama):
    _, tok = tiny_llama
    kinds = []
    for i in range(60):
        r = packer.row(i)
        ids, pos, lab = r["input_ids"], r["position_ids"], r["labels"]
        assert ids.shape == pos.shape == lab.shape == (L,)
        assert ids[0] == tok.bos_token_id
        if r["is_long"]:
            np.testing.assert_array_equal(pos, np.arange(L))  # full causal attention over the row
        else:
            for seg in segments(pos):
                assert pos[seg[0]] == 0 and len(seg) <= L0  # documents <= L0, positions restart
                assert ids[seg[0]] == tok.bos_token_id and lab[seg[0]] == -100  # no cross-document target
        kinds.append(bool(r["is_long"]))
        np.testing.assert_array_equal(packer.row(i)["input_ids"], ids)  # a pure function of (seed, index)
    assert 0.3 < np.mean(kinds) < 0.7


def test_needle_documents_every_token_supervised(tiny_corpus, tiny_llama):
    from longrope2.needles import NeedleBuilder

    _, tok = tiny_llama
    train = TokenizedCorpus(tiny_corpus, "train")
    spec = RowSpec(1024, 256, 0.5, seed=4, needle_fraction=1.0)
    pk = Packer(train, spec, tok.bos_token_id, NeedleBuilder(train, tok, {"preamble": ""}, 0))
    kinds = set()
    for i in range(12):
        r = pk.row(i)
        ids, lab = r["input_ids"], r["labels"]
        assert ids.shape == (1024,)
        # LM loss on every token of short and long rows alike; only documents' BOS tokens are not targets
        np.testing.assert_array_equal(lab[1:] == -100, ids[1:] == tok.bos_token_id)
        assert "special magic number" in tok.decode(ids.tolist())
        # answers: the 7-digit value after each question, and its EOS
        marked = ids[r["answers"]]
        assert marked[-1] == tok.eos_token_id and (marked == tok.eos_token_id).sum() >= 1
        assert tok.decode(marked[marked != tok.eos_token_id].tolist()).replace(" ", "").isdigit()
        kinds.add(bool(r["is_long"]))
    assert kinds == {True, False}
    np.testing.assert_array_equal(pk.row(3)["input_ids"], pk.row(3)["input_ids"])


def test_answer_weight_adds_the_answer_mean(tiny_corpus, tiny_llama):
    """loss / count = token mean + w x answer mean, the same formula for short and long rows."""
    from longrope2.needles import NeedleBuilder

    model, tok = tiny_llama
    train = TokenizedCorpus(tiny_corpus, "train")
    pk = Packer(train, RowSpec(1024, 256, 0.5, seed=5, needle_fraction=1.0), tok.bos_token_id,
                NeedleBuilder(train, tok, {"preamble": ""}, 0))
    b = pk.batch(range(3))
    assert b["answers"].any(1).all()
    with torch.no_grad():
        plain, count = CausalLMLoss(model, chunk=64)(b["input_ids"], b["position_ids"], b["labels"], b["answers"])
        weighted, count2 = CausalLMLoss(model, chunk=64, answer_weight=0.5)(
            b["input_ids"], b["position_ids"], b["labels"], b["answers"])
        logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[:, :-1]
    nll = F.cross_entropy(logits.transpose(1, 2), b["labels"][:, 1:], ignore_index=-100, reduction="none")
    answer_mean = nll[b["answers"][:, 1:]].mean()
    assert count == count2
    torch.testing.assert_close(plain / count, nll[b["labels"][:, 1:] != -100].mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weighted / count, plain / count + 0.5 * answer_mean, rtol=1e-5, atol=1e-6)


def test_long_only_ablation_changes_only_the_rope(packer, tiny_llama):
    """--no-mixed trains on the same rows; a short row then gets the long factors instead of the original."""
    model, _ = tiny_llama
    geom = rope.RopeGeometry.from_hf_config(model.config, original_length=L0)
    scaling = rope.build("longrope2", geom, L)
    short = next(packer.row(i) for i in range(20) if not packer.row(i)["is_long"])
    pos = torch.from_numpy(short["position_ids"])[None]
    x = torch.zeros(1, L, geom.head_dim)

    def expected(factor):
        freqs = pos[0, :, None].float() * rope.inv_freq(geom, factor)[None]
        return torch.cat((freqs, freqs), -1).cos() * scaling.attention_factor

    assert not np.allclose(scaling.short_factor, scaling.long_factor)
    torch.testing.assert_close(rope.RowwiseRotary(scaling)(x, pos)[0][0], expected(scaling.short_factor))
    torch.testing.assert_close(rope.RowwiseRotary(scaling, always_long=True)(x, pos)[0][0], expected(scaling.long_factor))


def test_rowwise_rope_matches_hf_switch_per_row(packer, tiny_llama, tmp_path):
    model, _ = tiny_llama
    geom = rope.RopeGeometry.from_hf_config(model.config, original_length=L0)
    s = L / L0
    d = rope.critical_dim(geom)
    scaling = rope.longrope2(geom, L, d, np.linspace(s, 1.5 * s, geom.n_pairs - d))
    export = AutoModelForCausalLM.from_config(model.config.__class__.from_dict(model.config.to_dict())).eval()
    export.load_state_dict(model.state_dict())
    rope.apply_scaling(export, scaling)  # HF longrope: one factor set per forward, chosen by length
    rows = [packer.row(i) for i in range(12)]
    short = next(r for r in rows if not r["is_long"])
    long = next(r for r in rows if r["is_long"])
    mixed = AutoModelForCausalLM.from_config(export.config.__class__.from_dict(export.config.to_dict())).eval()
    mixed.load_state_dict(model.state_dict())
    mixed.base_model.rotary_emb = rope.RowwiseRotary(scaling)
    ids = torch.from_numpy(np.stack([short["input_ids"], long["input_ids"]]))
    pos = torch.from_numpy(np.stack([short["position_ids"], long["position_ids"]]))
    with torch.no_grad():
        both = mixed(input_ids=ids, position_ids=pos, use_cache=False).logits
        for i in range(2):
            alone = export(input_ids=ids[i : i + 1], position_ids=pos[i : i + 1], use_cache=False).logits
            torch.testing.assert_close(both[i : i + 1], alone, atol=2e-5, rtol=1e-4)
        # the short row really uses per-document attention (transformers derives the mask from the
        # restarting positions only without a KV cache): its second document ignores the first
        seg = segments(short["position_ids"])[1]
        lone = export(input_ids=ids[:1, seg], position_ids=pos[:1, seg]).logits
        torch.testing.assert_close(both[0, seg], lone[0], atol=2e-5, rtol=1e-4)


def test_chunked_loss_equals_full_logits(packer, tiny_llama):
    model, _ = tiny_llama
    b = packer.batch(range(3))
    wrapped = CausalLMLoss(model, chunk=37)
    nll, count = wrapped(b["input_ids"], b["position_ids"], b["labels"])
    (nll / count).backward()
    g_fast = model.lm_head.weight.grad.clone()
    model.zero_grad()
    logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits[:, :-1]
    ref = F.cross_entropy(logits.transpose(1, 2), b["labels"][:, 1:], ignore_index=-100)
    ref.backward()
    torch.testing.assert_close(nll / count, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_fast, model.lm_head.weight.grad, rtol=1e-4, atol=1e-7)
    model.zero_grad()


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    cfg = [REPO / "config/config.yaml", MICRO]
    run_cli("corpus", "--config", *cfg, "--out", root / "corpus")
    run_cli("pretrain", "--config", *cfg, "--corpus", root / "corpus", "--out", root / "base", "--checkpoint-dir", root / "ck")
    geom = rope.RopeGeometry(16, 10000.0, 256)
    (root / "lr2.json").write_text(json.dumps(rope.longrope2(geom, 1024, 3, [5.0, 6.0, 7.0, 7.5, 8.0]).to_dict()))
    return root


def finetune(root, out, *extra, env=None):
    return run_cli("finetune", "--config", REPO / "config/config.yaml", MICRO, *extra, "--model", root / "base/model",
                   "--corpus", root / "corpus", "--factors", root / "lr2.json", "--label", "longrope2", "--out", out)


def test_resume_ends_with_the_same_weights(micro_base, tmp_path):
    finetune(micro_base, tmp_path / "ref", "--threads", "1")
    ck = tmp_path / "ck"
    finetune(micro_base, tmp_path / "part", "--threads", "1", "--checkpoint-dir", ck, "--max-steps", "4")
    assert list(ck.glob("step-*.pt")) and not (tmp_path / "part" / "model").exists()
    second = run_cli("finetune", "--config", REPO / "config/config.yaml", MICRO, "--threads", "1", "--model",
                     micro_base / "base/model", "--corpus", micro_base / "corpus", "--factors", micro_base / "lr2.json",
                     "--label", "longrope2", "--out", tmp_path / "resumed", "--checkpoint-dir", ck)
    assert "resuming from step 4" in second.stdout + second.stderr
    a = load_file(tmp_path / "ref/model/model.safetensors")
    b = load_file(tmp_path / "resumed/model/model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    cfg = json.loads((tmp_path / "resumed/model/config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == "longrope" and cfg["rope_parameters"]["short_factor"] == [1.0] * 8
    base = load_file(micro_base / "base/model/model.safetensors")
    assert any(not torch.equal(a[k], base[k]) for k in a)  # it did train


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_with_gloo(micro_base, tmp_path, mode):
    over = tmp_path / "par.yaml"
    over.write_text(f"finetune: {{parallel: {mode}, steps: 2, batch_size: 1, grad_accum: 1}}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "longrope2", "finetune", "--config",
                           str(REPO / "config/config.yaml"), str(MICRO), str(over), "--model", str(micro_base / "base/model"),
                           "--corpus", str(micro_base / "corpus"), "--factors", str(micro_base / "lr2.json"), "--label",
                           f"lr2-{mode}", "--out", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ck")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "out/train_log.csv").read_text().splitlines()
    assert len(log) == 3 and all(np.isfinite(float(line.split(",")[1])) for line in log[1:])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out/model")
    assert model.config.rope_parameters["rope_type"] == "longrope"
