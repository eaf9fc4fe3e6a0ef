"""One module per pipeline stage; each exposes NAME, HELP, add_arguments(parser) and run(cfg, out, args)."""

from . import critical_dims

#: registration order is the order of ``longrope2 --help``
STAGES = [critical_dims]
