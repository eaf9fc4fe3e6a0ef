"""Training-free baseline factors straight from the RoPE core: none, PI, NTK (static and
critical-dimension), YaRN, and NTK-rcd / YaRN-rcd anchored at the real critical dimension the LongRoPE2
search found (only those two read ``--searched``; the others depend on the geometry alone). Two rows come
from outside: ``fixed_factors`` takes a published LongRoPE2 factor set (``extension.fixed_factors``,
``longrope2.published``), ``as_is`` a checkpoint's own rope parameters (``--model``: its config.json, read
with its own L0 and window).

Writes ``factors.json`` (the same format as the search's).
"""

from __future__ import annotations

import argparse
import json

from .. import methods, models, published, rope
from ..artifacts import StageRun
from ..errors import ConfigError

NAME = "baseline"
HELP = "factors of one training-free baseline (none, PI, NTK, YaRN, NTK-rcd, YaRN-rcd, published, as-is)"
CONFIG_KEYS = ("model.geometry", "extension.target_length", "extension.fixed_factors")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("searched", "model")
BASELINES = [n for n, m in methods.REGISTRY.items() if not m.searched]


def config_keys(method: str) -> tuple[str, ...]:
    """The keys one method reads: only ``fixed_factors`` reads which published set it is."""
    return CONFIG_KEYS if method == "fixed_factors" else CONFIG_KEYS[:2]


def config_keys_for(args: argparse.Namespace) -> tuple[str, ...]:
    """The CLI's hook: the keys of this invocation's method (what ``--config-json`` must hold)."""
    return config_keys(args.method)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=BASELINES, help="which baseline")
    p.add_argument("--searched", metavar="FILE", help="LongRoPE2 factors.json (gives d_rcd; rcd baselines only)")
    p.add_argument("--model", metavar="DIR", help="the checkpoint whose own rope parameters as_is takes (as_is only)")


def checkpoint_rope(model_dir: str, cfg_geom: dict, target: int) -> rope.RopeScaling:
    """``as_is``: the checkpoint's rope parameters with its own L0 and window; its rotary geometry must be the
    experiment's (head_dim, base, partial rotary factor) so the rows compare the same architecture."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models.check_model_dir(model_dir))
    geom = rope.RopeGeometry.from_hf_config(config)
    models.check_geometry(geom, rope.RopeGeometry.from_mapping(cfg_geom), "--model", "model.geometry",
                          models.GEOMETRY_KEYS[:3])
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    window = int(config.max_position_embeddings)
    if window < target:
        raise ConfigError("extension.as_is", f"the checkpoint {model_dir} is extended to {window} tokens, below "
                                             f"extension.target_length={target}")
    return rope.build("as_is", geom, window, rope_parameters=dict(params))


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    geom = rope.RopeGeometry.from_mapping(cfg["model"]["geometry"])
    target = cfg["extension"]["target_length"]
    params, inputs = {}, []
    if args.method == "as_is":
        if not args.model:
            raise ConfigError("--model", "as_is needs the checkpoint whose own rope parameters it evaluates")
        scaling = checkpoint_rope(args.model, cfg["model"]["geometry"], target)
        with StageRun("baseline", out, cfg, inputs=[args.model], seed=None, extra={"method": args.method}) as run_:
            run_.write_json("factors.json", scaling.to_dict())
        print(f"baseline as_is ({scaling.extra['checkpoint_rope_type']}, L0={scaling.geometry.original_length} -> "
              f"{scaling.target_length}) from {args.model} -> {out}")
        return
    if args.method == "fixed_factors":
        p = published.check(cfg["extension"]["fixed_factors"], cfg["model"]["geometry"], target)
        params = {"long_factor": p.long_factor, "short_factor": p.short_factor, "attention_factor": p.attention_factor}
    elif methods.get(args.method).needs_d_rcd:
        if not args.searched:
            raise ConfigError("--searched", f"{args.method} needs the LongRoPE2 search's factors.json (its d_rcd)")
        searched = rope.scaling_from_dict(json.loads(open(args.searched).read()), source=args.searched)
        params["d_rcd"], inputs = int(searched.extra["d_rcd"]), [args.searched]
    scaling = rope.build(args.method, geom, target, **params)
    if args.method == "fixed_factors":  # where the factors come from, and their first searched pair
        scaling.extra.update(published=p.name, source=p.source, d_rcd=p.d_rcd)
        params = {"fixed_factors": p.name}
    with StageRun("baseline", out, cfg, inputs=inputs, seed=None, extra={"method": args.method}) as run_:
        run_.write_json("factors.json", scaling.to_dict())
    print(f"baseline {args.method} {params} -> {out}")
