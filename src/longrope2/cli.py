"""``longrope2 <stage> --config FILE [FILE ...] --out DIR``: the command every Snakemake rule runs."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from . import config as cfgmod
from .errors import LongRoPE2Error
from .stages import STAGES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longrope2", description=__doc__)
    parser.add_argument("--version", action="version", version=f"longrope2 {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES:
        p = sub.add_parser(stage.NAME, help=stage.HELP, description=stage.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", nargs="+", required=True, metavar="FILE",
                       help="experiment config files, later ones override earlier ones (as Snakemake reads them)")
        p.add_argument("--out", required=True, metavar="DIR", help="output folder of this stage")
        p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (Snakemake passes {threads})")
        stage.add_arguments(p)
        p.set_defaults(_stage=stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = cfgmod.load(args.config)
        args._stage.run(cfg, args.out, args)
    except LongRoPE2Error as e:
        print(f"longrope2 {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
