"""Progress bars that also show in Snakemake logs (redirected stderr): sparser updates off a terminal."""

import sys

from tqdm import tqdm


def bar(*args, enabled: bool = True, **kwargs) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(*args, disable=not enabled, mininterval=0.5 if interactive else 15.0, **kwargs)


def write(text: str) -> None:
    """Print a line without breaking an active bar."""
    tqdm.write(text)
