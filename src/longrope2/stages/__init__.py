"""One module per pipeline stage; each exposes NAME, HELP, CONFIG_KEYS (the dotted config keys it reads,
the only ones it is given), add_arguments(parser) and run(cfg, out, args)."""

from . import (baselines, corpus, critical_dims, evaluate, export, factor_shape, finetune, import_model, needles,
               pretrain, retrieval, ruler_data, ruler_eval, ruler_tables, search, seeds, suite_eval, tables)

#: registration order is the order of ``longrope2 --help``
STAGES = [critical_dims, corpus, import_model, pretrain, retrieval, needles, search, factor_shape, baselines, export,
          finetune, evaluate, ruler_data, ruler_eval, suite_eval, ruler_tables, tables, seeds]

#: stage name -> the config keys it reads (what a rule's params hold)
CONFIG_KEYS = {s.NAME: s.CONFIG_KEYS for s in STAGES}
