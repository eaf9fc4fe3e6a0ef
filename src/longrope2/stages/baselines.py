"""Training-free baselines straight from the RoPE core: none, PI, NTK (static and critical-dimension),
YaRN, and NTK-rcd / YaRN-rcd anchored at the real critical dimension the LongRoPE2 search found.

Writes one ``{method}.json`` per method (the same format as the search's ``factors.json``).
"""

from __future__ import annotations

import argparse
import json

from .. import rope
from ..artifacts import StageRun

NAME = "baselines"
HELP = "factors of the training-free baselines (none, PI, NTK, YaRN, NTK-rcd, YaRN-rcd)"

BASELINES = ("none", "pi", "ntk_static", "ntk", "yarn", "ntk_rcd", "yarn_rcd")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--searched", required=True, metavar="FILE", help="LongRoPE2 factors.json (gives d_rcd)")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    geom = rope.RopeGeometry.from_mapping(cfg["model"]["geometry"])
    target = cfg["extension"]["target_length"]
    d_rcd = int(json.loads(open(args.searched).read())["d_rcd"])
    subset = {"model": {"geometry": cfg["model"]["geometry"]}, "extension": {"target_length": target}}
    with StageRun("baselines", out, subset, inputs=[args.searched], seed=None) as run_:
        for name in BASELINES:
            run_.write_json(f"{name}.json", rope.METHODS[name](geom, target, d_rcd=d_rcd).to_dict())
    print(f"baselines {', '.join(BASELINES)} (d_rcd={d_rcd}) -> {out}")
