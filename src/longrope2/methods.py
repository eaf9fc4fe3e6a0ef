"""The one registry of extension methods: every other place (config schema enums, Snakemake targets,
search spaces, baseline factors, table rows and labels) takes method names from here.

Pure data, no heavy imports: the Snakefile reads it while it parses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Method:
    name: str
    label: str  #: row label in the paper tables
    kind: str  #: "original" | "baseline" (geometry only) | "rcd_baseline" (needs LongRoPE2's d_rcd) | "searched"
    #: | "published" (released factors, ``extension.fixed_factors``) | "checkpoint" (a checkpoint's own RoPE)
    rope_function: str  #: the function in ``rope.METHODS`` that builds (or re-checks) its factors
    space: str | None = None  #: search space of a searched method: "longrope2" | "v1" | "all_pairs"
    objective: str | None = None  #: search objective: "needle" (needle-PPL) | "plain" (plain PPL)
    ablation: bool = False  #: a paper ablation: searched and compared, but not an extension method

    @property
    def searched(self) -> bool:
        return self.kind == "searched"

    @property
    def needs_d_rcd(self) -> bool:
        return self.kind == "rcd_baseline"

    @property
    def reads_checkpoint(self) -> bool:
        """Its factors (and the weights it is evaluated with) come from a checkpoint, not from the geometry."""
        return self.kind == "checkpoint"


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("none", "original RoPE", "original", "none"),
        Method("pi", "PI", "baseline", "pi"),
        Method("ntk_static", "NTK (static)", "baseline", "ntk_static"),
        Method("ntk", "NTK", "baseline", "ntk"),
        Method("yarn", "YaRN", "baseline", "yarn"),
        Method("ntk_rcd", "NTK-rcd", "rcd_baseline", "ntk_rcd"),
        Method("yarn_rcd", "YaRN-rcd", "rcd_baseline", "yarn_rcd"),
        Method("longrope", "LongRoPE", "searched", "longrope", space="v1", objective="plain"),
        Method("longrope2", "LongRoPE2", "searched", "longrope2", space="longrope2", objective="needle"),
        Method("longrope2_plain_ppl", "LongRoPE2, plain-PPL search", "searched", "longrope2", space="longrope2",
               objective="plain", ablation=True),
        Method("longrope2_all_pairs", "LongRoPE2, all-pairs search", "searched", "longrope", space="all_pairs",
               objective="needle", ablation=True),
        Method("fixed_factors", "LongRoPE2, published factors", "published", "fixed_factors"),
        Method("as_is", "released checkpoint, as is", "checkpoint", "as_is"),
    )
}

#: the fine-tuning ablation of §3.3: LongRoPE2's factors, every row long (no mixed context window training)
NO_MIXED_SUFFIX = "_no_mixed"
NO_MIXED = f"longrope2{NO_MIXED_SUFFIX}"

#: names allowed in ``extension.methods`` and ``finetune.methods`` (schema enums)
EXTENSION_METHODS = [n for n, m in REGISTRY.items() if m.kind != "original" and not m.ablation]
#: names allowed in ``search.methods``
SEARCHED_METHODS = [n for n, m in REGISTRY.items() if m.searched]
#: baselines computed from the geometry alone (stage 1 draws their factor curves)
GEOMETRY_BASELINES = [n for n, m in REGISTRY.items() if m.kind == "baseline"]
#: rcd baselines show what the searched d_rcd alone buys (compared unless ``extension.rcd_baselines`` is false)
RCD_BASELINES = [n for n, m in REGISTRY.items() if m.needs_d_rcd]
#: the method that evaluates a checkpoint's own rope parameters (``extension.as_is`` names the checkpoint)
AS_IS = "as_is"


def get(name: str) -> Method:
    from .errors import ConfigError

    if name not in REGISTRY:
        raise ConfigError("method", f"unknown method {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def training_free(cfg: Mapping) -> list[str]:
    """Rows of the training-free table: original RoPE, the configured methods, the rcd baselines and every
    searched method (ablations included), in registry order."""
    rcd = RCD_BASELINES if cfg["extension"]["rcd_baselines"] else []
    wanted = {"none", *cfg["extension"]["methods"], *rcd, *cfg["search"]["methods"]}
    return [n for n in REGISTRY if n in wanted]


def ruler_training_free(cfg: Mapping) -> list[str]:
    """Training-free methods the RULER stage scores (``evaluation.ruler.training_free``; null: all of them).
    The base (none) is always among them: retention after fine-tuning is measured against it."""
    from .errors import ConfigError

    rows = training_free(cfg)
    chosen = cfg["evaluation"]["ruler"].get("training_free")
    if chosen is None:
        return rows
    if unknown := [m for m in chosen if m not in rows]:
        raise ConfigError("evaluation.ruler.training_free", f"not a training-free row of this experiment: "
                          f"{', '.join(unknown)}; allowed: {', '.join(rows)}")
    return [m for m in rows if m == "none" or m in chosen]


def finetuned(cfg: Mapping) -> list[str]:
    """Fine-tuning runs: the configured methods plus, when enabled, LongRoPE2 without mixed training."""
    runs = [n for n in REGISTRY if n in cfg["finetune"]["methods"]]
    return runs + ([NO_MIXED] if cfg["finetune"]["no_mixed_ablation"] else [])


def base_method(run: str) -> str:
    """The method whose factors a fine-tuning run trains with (the no-mixed ablation uses LongRoPE2's)."""
    return run.removesuffix(NO_MIXED_SUFFIX)

