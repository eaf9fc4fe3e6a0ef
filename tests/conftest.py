import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Hub access is never needed by the tests (and not available in CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_cli(*args, cwd=None, check=True):
    """Run the longrope2 console script (the same interface Snakemake rules use)."""
    proc = subprocess.run([str(BIN / "longrope2"), *map(str, args)], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"longrope2 {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_workflow(dst: Path) -> Path:
    """A copy of the workflow (no results) to run Snakemake in isolation."""
    for name in ("Snakefile", "rules", "config", "envs", "report", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name)
        else:
            shutil.copy(src, dst / name)
    return dst


@pytest.fixture
def workdir(tmp_path):
    return copy_workflow(tmp_path)


def snakemake(*args, cwd):
    return subprocess.run([str(BIN / "snakemake"), *map(str, args)], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small stdlib corpus with its own tokenizer (seconds), shared by the tests."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    override = root / "override.yaml"
    override.write_text("corpus:\n  max_documents: 120\n  test_fraction: 0.2\ntokenizer:\n  vocab_size: 512\n")
    run_cli("corpus", "--config", REPO / "config/config.yaml", override, "--out", root / "corpus")
    return root / "corpus"


@pytest.fixture(scope="session")
def tiny_llama(tiny_corpus):
    """A randomly initialised tiny Llama over the tiny corpus' tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_corpus / "tokenizer")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def word_tokenizer(vocab: int):
    """A word-level tokenizer over "w0 w1 ..." with <pad>/<s>/</s>/<unk>: tiny models need no trained BPE."""
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(vocab - 4)]
    tk = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
