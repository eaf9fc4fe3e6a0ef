"""One module per pipeline stage; each exposes NAME, HELP, add_arguments(parser) and run(cfg, out, args)."""

from . import corpus, critical_dims, import_model, needles, pretrain, retrieval, search

#: registration order is the order of ``longrope2 --help``
STAGES = [critical_dims, corpus, import_model, pretrain, retrieval, needles, search]
