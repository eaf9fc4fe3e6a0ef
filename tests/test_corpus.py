"""Corpus sources, deterministic splits, tokenizer and memory-mapped token arrays."""

import json

import numpy as np
import pytest
import yaml
from transformers import AutoTokenizer

from longrope2 import config as cfgmod
from longrope2 import corpus
from longrope2.errors import ConfigError

from conftest import REPO, run_cli


def cfg_with(tmp_path, **corpus_keys):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"corpus": corpus_keys, "tokenizer": {"vocab_size": 512}}))
    return [REPO / "config/config.yaml", p]


def test_stdlib_split_is_deterministic_and_excludes_tests():
    cfg = cfgmod.load([REPO / "config/config.yaml"])
    cfg["corpus"]["max_documents"] = 200
    a, b = corpus.split_documents(cfg), corpus.split_documents(cfg)
    assert [d.id for d in a["test"]] == [d.id for d in b["test"]]
    ids = [d.id for s in corpus.SPLITS for d in a[s]]
    assert len(ids) == 200 == len(set(ids))
    assert not any("/test/" in i or i.startswith("test/") for i in ids)
    assert corpus.split_of("json/decoder.py", 0.05, 0.05) == corpus.split_of("json/decoder.py", 0.05, 0.05)


def test_text_dir_corpus_stage_and_memmap(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "1234567", "the", "of"]
    texts = [" ".join(rng.choice(words, 400)) for _ in range(40)]
    for i, t in enumerate(texts[:20]):
        (docs / f"d{i:02d}.txt").write_text(t)
    (docs / "more.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts[20:])))
    out = tmp_path / "corpus"
    run_cli("corpus", "--config", *cfg_with(tmp_path, source="text_dir", path=str(docs), test_fraction=0.2,
                                             validation_fraction=0.2), "--out", out)
    meta = json.loads((out / "corpus.json").read_text())
    assert sum(meta["fingerprint"]["documents"].values()) == 40
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tok.bos_token == "<bos>" and len(tok) == meta["vocab_size"] <= 512
    # digits are single tokens: a 7-digit value is 7 tokens
    assert len(tok(" 7654321", add_special_tokens=False)["input_ids"]) == 8
    for split in corpus.SPLITS:
        c = corpus.TokenizedCorpus(out, split)
        assert len(c) == meta["fingerprint"]["documents"][split] and c.n_tokens == meta["tokens"][split]
        assert c.tokens.dtype == np.uint16
        all_texts = dict(zip([f"d{i:02d}.txt" for i in range(20)], texts[:20])) | {f"more.jsonl:{i}": t for i, t in enumerate(texts[20:])}
        assert tok.decode(c[0].tolist()) == all_texts[c.ids[0]]  # byte-level BPE round-trips exactly
    man = json.loads((out / "manifest.json").read_text())
    assert man["corpus_fingerprint"]["sha256"] == meta["fingerprint"]["sha256"]


def test_bad_corpus_inputs(tmp_path):
    cfg = cfgmod.load(cfg_with(tmp_path, source="text_dir", path=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="^corpus.path: must be an existing folder"):
        corpus.split_documents(cfg)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    (tiny / "a.txt").write_text("x" * 300)
    proc = run_cli("corpus", "--config", *cfg_with(tmp_path, source="text_dir", path=str(tiny)), "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "corpus: the " in proc.stderr and "split is empty" in proc.stderr
    assert not (tmp_path / "o" / "corpus.json").exists()


def test_hf_dataset_offline_fails_fast_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = cfgmod.load(cfg_with(tmp_path, source="hf_dataset", dataset={"name": "deepmind/pg19", "split": "test"}))
    with pytest.raises(ConfigError, match=r"^corpus.dataset.name: could not load Hugging Face dataset 'deepmind/pg19'"):
        corpus.split_documents(cfg)


def test_too_small_corpus_is_reported(tmp_path):
    c = corpus.TokenizedCorpus.__new__(corpus.TokenizedCorpus)
    c.split, c.offsets = "test", np.array([0, 100])
    with pytest.raises(ConfigError, match="fewer than the 4096"):
        corpus.check_size(c, 4096)
