"""Training-free baseline factors straight from the RoPE core: none, PI, NTK (static and
critical-dimension), YaRN, and NTK-rcd / YaRN-rcd anchored at the real critical dimension the LongRoPE2
search found (only those two read ``--searched``; the others depend on the geometry alone).

Writes ``factors.json`` (the same format as the search's).
"""

from __future__ import annotations

import argparse
import json

from .. import methods, rope
from ..artifacts import StageRun
from ..errors import ConfigError

NAME = "baseline"
HELP = "factors of one training-free baseline (none, PI, NTK, YaRN, NTK-rcd, YaRN-rcd)"
CONFIG_KEYS = ("model.geometry", "extension.target_length")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("searched",)
BASELINES = [n for n, m in methods.REGISTRY.items() if not m.searched]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=BASELINES, help="which baseline")
    p.add_argument("--searched", metavar="FILE", help="LongRoPE2 factors.json (gives d_rcd; rcd baselines only)")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    geom = rope.RopeGeometry.from_mapping(cfg["model"]["geometry"])
    target = cfg["extension"]["target_length"]
    params, inputs = {}, []
    if methods.get(args.method).needs_d_rcd:
        if not args.searched:
            raise ConfigError("--searched", f"{args.method} needs the LongRoPE2 search's factors.json (its d_rcd)")
        searched = rope.scaling_from_dict(json.loads(open(args.searched).read()), source=args.searched)
        params["d_rcd"], inputs = int(searched.extra["d_rcd"]), [args.searched]
    with StageRun("baseline", out, cfg, inputs=inputs, seed=None, extra={"method": args.method}) as run_:
        run_.write_json("factors.json", rope.build(args.method, geom, target, **params).to_dict())
    print(f"baseline {args.method} {params} -> {out}")
