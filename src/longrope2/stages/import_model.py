"""Import a real base model (hub id, local folder or GGUF) into a normalized HF folder under resources/.

The folder holds safetensors weights, the tokenizer and config.json, loadable by stock
``AutoModelForCausalLM.from_pretrained``; ``geometry.json`` records its RoPE geometry, checked against
the experiment's ``model.geometry`` (head_dim, rope_base, partial_rotary_factor must agree).

With ``--as-is`` it imports the already-extended checkpoint named by ``extension.as_is`` instead (what the
``as_is`` method evaluates with its own rope parameters); its geometry keeps the checkpoint's own L0.
"""

from __future__ import annotations

import argparse
import time

from .. import models
from ..artifacts import StageRun
from ..errors import ConfigError
from ..rope import RopeGeometry, critical_dim

NAME = "import-model"
HELP = "real model (hub / local / GGUF) -> normalized HF folder + RoPE geometry"
CONFIG_KEYS = ("model.source", "model.id", "model.geometry", "model.slice", "extension.as_is")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ()


def config_keys(as_is: bool) -> tuple[str, ...]:
    """The base model reads model.source/id/slice; the as_is checkpoint reads extension.as_is instead."""
    return ("extension.as_is", "model.geometry") if as_is else CONFIG_KEYS[:4]


def config_keys_for(args: argparse.Namespace) -> tuple[str, ...]:
    """The CLI's hook: the keys of this invocation (what ``--config-json`` must hold)."""
    return config_keys(args.as_is)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--as-is", action="store_true",
                   help="import extension.as_is (an already-extended checkpoint) instead of the base model")


def check_geometry(found: RopeGeometry, cfg_geom: dict) -> None:
    for key, have in (("head_dim", found.head_dim), ("rope_base", found.rope_base),
                      ("partial_rotary_factor", found.partial_rotary_factor)):
        want = cfg_geom.get(key, 1.0 if key == "partial_rotary_factor" else None)
        if want is not None and abs(float(want) - float(have)) > 1e-9 * max(1.0, abs(float(have))):
            raise ConfigError(f"model.geometry.{key}", f"config says {want}, the model has {have}")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    spec = cfg["model"]
    if args.as_is:
        if cfg["extension"]["as_is"] is None:
            raise ConfigError("extension.as_is", "is null; --as-is imports the checkpoint it names")
        spec = {**cfg["extension"]["as_is"], "geometry": spec["geometry"]}
    if spec["source"] == "scale":
        raise ConfigError("model.source", "import-model takes hub, local or gguf; the scale model is built by `pretrain`")
    t0 = time.perf_counter()
    model, tok, origin = models.load_model(spec)
    load_s = time.perf_counter() - t0
    # geometry of the model, with the experiment's L0 (the paper uses 2048 for Phi-3-mini-4k); an
    # already-extended checkpoint keeps its own (its rope parameters are relative to it)
    found = RopeGeometry.from_hf_config(model.config,
                                        original_length=None if args.as_is else spec["geometry"]["original_length"])
    check_geometry(found, spec["geometry"])
    n_params = sum(p.numel() for p in model.parameters())
    with StageRun("import_model", out, cfg, inputs=[origin["gguf"]] if "gguf" in origin else [], seed=None,
                  extra={"origin": origin, "load_seconds": round(load_s, 2)}) as run_:
        model.save_pretrained(run_.path("model"), safe_serialization=True)
        tok.save_pretrained(run_.path("model"))
        run_.write_json("geometry.json", {**found.to_dict(), "d_tcd": critical_dim(found), "origin": origin,
                                          "model_type": model.config.model_type, "parameters": n_params,
                                          "config_max_position_embeddings": model.config.max_position_embeddings})
    print(f"imported {origin} ({n_params / 1e6:.1f}M params, load {load_s:.1f}s): rotary_dim={found.rotary_dim} "
          f"base={found.rope_base:g} L0={found.original_length} d_tcd={critical_dim(found)} -> {out}")
