"""``longrope2 <stage> (--config FILE [FILE ...] | --config-json JSON) --out DIR``: the command every
Snakemake rule runs.

Each stage declares the config keys it reads (``CONFIG_KEYS``) and is given exactly that subset; a stage
whose keys depend on its arguments (ruler-data: each task reads its own) also defines
``config_keys_for(args)``, the subset of one invocation. A rule passes the subset itself (``--config-json``,
the same JSON its ``params`` hold, so Snakemake reruns a job exactly when a key it reads changes); by hand,
``--config`` takes the experiment's YAML files, later ones overriding earlier ones, and extracts the same
subset.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from . import config as cfgmod
from . import artifacts
from .errors import LongRoPE2Error
from .stages import STAGES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longrope2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"longrope2 {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES:
        keys = ", ".join(stage.CONFIG_KEYS) or "none"
        p = sub.add_parser(stage.NAME, help=stage.HELP, description=f"{stage.__doc__}\nConfig keys read: {keys}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--config", nargs="+", metavar="FILE",
                         help="experiment config files, later ones override earlier ones (as Snakemake reads them)")
        src.add_argument("--config-json", metavar="JSON", help="the stage's config subset as JSON (what rules pass)")
        p.add_argument("--out", required=True, metavar="DIR", help="output folder of this stage")
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (Snakemake passes {threads})")
        stage.add_arguments(p)
        p.set_defaults(_stage=stage)
    p = sub.add_parser("plan", help="estimated jobs, GPU-hours, wall time and disk of every stage (runs nothing)",
                       description="Each stage of an experiment with its jobs, GPUs per job, estimated GPU-hours, "
                                   "wall time and disk, from longrope2.resources' model (estimates, not measurements).")
    p.add_argument("--config", nargs="+", required=True, metavar="FILE",
                   help="experiment config files, later ones override earlier ones (as Snakemake reads them)")
    p.add_argument("--imported", metavar="FILE", help="the imported model's config.json (default: "
                   "resources/<experiment>/base_model/model/config.json where it exists, else model.size)")
    p.set_defaults(_stage=None)
    return parser


def config_keys(args: argparse.Namespace) -> tuple[str, ...]:
    """The config keys this invocation reads: the stage's ``config_keys_for(args)`` where it defines one
    (keys that depend on its arguments), else its ``CONFIG_KEYS``."""
    per_invocation = getattr(args._stage, "config_keys_for", None)
    return tuple(per_invocation(args)) if per_invocation else args._stage.CONFIG_KEYS


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage == "plan":
        from . import plan

        try:
            print(plan.main(args.config, args.imported), end="")
        except LongRoPE2Error as e:
            print(f"longrope2 plan: error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        cfg = cfgmod.stage_config(config_keys(args), files=args.config, json_text=args.config_json)
        artifacts.forget_verified()  # one stage run per call: never trust a hash from an earlier call
        artifacts.verify_inputs({name: getattr(args, name) for name in args._stage.INPUTS if getattr(args, name)})
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        args._stage.run(cfg, args.out, args)
    except LongRoPE2Error as e:
        print(f"longrope2 {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
