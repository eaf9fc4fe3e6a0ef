"""Export a base model with a method's RoPE factors as a stock Hugging Face checkpoint.

Loads the base model once (CPU, fp32), installs the factors of ``--factors`` in place
(``rope.apply_scaling``, which also writes the matching ``rope_parameters`` and
``max_position_embeddings`` into the config) and writes:

- ``model/``: safetensors weights, config.json and tokenizer, loadable with plain
  ``AutoModelForCausalLM.from_pretrained`` (no remote code) and giving the logits of the patched model
  below and above L0. Rope types: ``longrope`` (LongRoPE, LongRoPE2), ``linear`` (PI), ``yarn``,
  ``default`` with a new ``rope_theta`` (NTK variants); Phi-3 configs get ``longrope`` for PI/YaRN too.
- ``rope.json``: the scaling (``RopeScaling.to_dict()``, extra keys of the factors file kept).

Generating past L0 with a ``longrope`` checkpoint of a non-Phi-3 model: use
``longrope2.generation.greedy_generate`` (stock ``generate`` keeps short-rotated keys in its cache).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from .. import models, rope
from ..artifacts import StageRun
from ..errors import ConfigError

NAME = "export"
HELP = "base model + RoPE factors -> Hugging Face checkpoint (safetensors, tokenizer, rope_parameters)"

_GEOMETRY_KEYS = ("head_dim", "rope_base", "partial_rotary_factor", "original_length")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="base model folder (HF layout)")
    p.add_argument("--factors", required=True, metavar="FILE",
                   help="JSON file holding RopeScaling.to_dict() (e.g. a search's factors.json)")


def load_factors(path: str | Path) -> rope.RopeScaling:
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--factors", f"file {str(path)!r} does not exist")
    try:
        return rope.scaling_from_dict(json.loads(path.read_text()))
    except ConfigError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("--factors", f"{path} does not hold a RopeScaling dict ({type(e).__name__}: {e})") from None


def check_geometry(have: rope.RopeGeometry, want: rope.RopeGeometry, key: str, what: str,
                   fields=_GEOMETRY_KEYS) -> None:
    for name in fields:
        a, b = getattr(have, name), getattr(want, name)
        if not math.isclose(float(a), float(b), rel_tol=1e-9):
            raise ConfigError(key, f"{name} is {a}, {what} says {b}")


def write_checkpoint(run_: StageRun, model, tok, scaling: rope.RopeScaling, **extra) -> None:
    """``model/`` (stock-transformers folder with the method's rope parameters) and ``rope.json``."""
    rope.apply_scaling(model, scaling)  # also sets model.config.rope_parameters / max_position_embeddings
    model.save_pretrained(run_.path("model"), safe_serialization=True)
    tok.save_pretrained(run_.path("model"))
    run_.write_json("rope.json", scaling.to_dict() | extra)


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    import torch

    scaling = load_factors(args.factors)
    geom = scaling.geometry
    check_geometry(geom, rope.RopeGeometry.from_mapping(cfg["model"]["geometry"]), "--factors", "model.geometry")
    model, tok = models.load_pretrained(args.model, device="cpu", dtype=torch.float32)
    found = rope.RopeGeometry.from_hf_config(model.config, original_length=geom.original_length)
    check_geometry(found, geom, "--model", f"the factors file {args.factors}", _GEOMETRY_KEYS[:3])
    subset = {"model": {"geometry": cfg["model"]["geometry"]}}
    with StageRun("export", out, subset, inputs=[args.model, args.factors], seed=None,
                  extra={"method": scaling.method}) as run_:
        write_checkpoint(run_, model, tok, scaling)
    rp = model.config.rope_parameters
    print(f"exported {scaling.method} (rope_type={rp['rope_type']}, L0={geom.original_length} -> "
          f"{scaling.target_length}, switches={scaling.switches}) -> {Path(out) / 'model'}")
