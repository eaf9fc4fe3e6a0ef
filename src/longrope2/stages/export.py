"""Export a base model with a method's RoPE factors as a stock Hugging Face checkpoint, without copying
weights.

The factors file is validated and turned into a ``RopeScaling`` (``rope.scaling_from_dict``), whose
fields are also what evaluation applies; ``rope.export_config`` writes the matching ``rope_parameters``
and ``max_position_embeddings`` into the base model's config. ``model/`` then holds that
``config.json`` and relative links to every other file of the base model folder (weights, tokenizer),
so an export weighs a few kB and loads with plain ``AutoModelForCausalLM.from_pretrained`` (no remote
code). Rope types: ``longrope`` (LongRoPE, LongRoPE2), ``linear`` (PI), ``yarn``, ``default`` with a new
``rope_theta`` (NTK variants); Phi-3 configs get ``longrope`` for PI/YaRN too. ``rope.json`` holds the
scaling (``RopeScaling.to_dict()``).

Generating past L0 with a ``longrope`` checkpoint of a non-Phi-3 model: use
``longrope2.generation.greedy_generate`` (stock ``generate`` keeps short-rotated keys in its cache).
A switching ``longrope`` export says so in ``model/README.md`` (``models.export_readme``), written
into the staging folder with the rest of ``model/``; other exports get no README.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import models, rope
from ..artifacts import StageRun

NAME = "export"
HELP = "base model + RoPE factors -> Hugging Face checkpoint (config.json with rope_parameters, linked weights)"
CONFIG_KEYS = ("model.geometry",)
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("model", "factors")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="base model folder (HF layout)")
    p.add_argument("--factors", required=True, metavar="FILE",
                   help="JSON file holding RopeScaling.to_dict() (e.g. a search's factors.json)")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    from transformers import AutoConfig

    scaling = models.load_factors(args.factors, rope.RopeGeometry.from_mapping(cfg["model"]["geometry"]))
    config = AutoConfig.from_pretrained(models.check_model_dir(args.model))
    models.check_geometry(rope.RopeGeometry.from_hf_config(config, original_length=scaling.geometry.original_length),
                          scaling.geometry, "--model", f"the factors file {args.factors}", models.GEOMETRY_KEYS[:3])
    rope.export_config(config, scaling)
    with StageRun("export", out, cfg, inputs=[args.model, args.factors], seed=None,
                  extra={"method": scaling.method}) as run_:
        models.write_linked_export(args.model, run_.path("model"), Path(out) / "model", config)
        run_.write_json("rope.json", scaling.to_dict())
    rp = config.rope_parameters
    print(f"exported {scaling.method} (rope_type={rp['rope_type']}, L0={scaling.geometry.original_length} -> "
          f"{scaling.target_length}, switches={scaling.switches}) -> {Path(out) / 'model'}")
