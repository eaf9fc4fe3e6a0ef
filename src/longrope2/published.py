"""Published LongRoPE2 rescale factors: what ``extension.fixed_factors`` selects for the ``fixed_factors``
method, copied verbatim from the released configs' ``rope_scaling`` together with the RoPE geometry and
window they were searched for.

- ``llama3-8b-longrope2``: Meta-Llama-3-8B, 8k -> 128k, from Microsoft nnScaler's LongRoPE2 example,
  https://github.com/microsoft/nnscaler/blob/main/examples/longrope2/llama3_8b_longrope2_config.json
- ``phi4-mini-instruct``: Phi-4-mini-instruct, 4k -> 128k (head_dim 128, partial rotary 0.75: 48 pairs),
  from its model card's config, https://huggingface.co/microsoft/Phi-4-mini-instruct/blob/main/config.json

Neither config names an ``attention_factor``, so transformers' ``longrope`` default
``sqrt(1 + ln s / ln L0)`` applies (``attention_factor = None`` here). Both long factors follow the
LongRoPE2 shape: NTK-like ``lambda_{d_rcd}^(i/d_rcd)`` below the first searched pair ``d_rcd``, searched above.

Pure data, no heavy imports: config validation reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError


@dataclass(frozen=True)
class Published:
    name: str
    model: str  #: the released model the factors belong to
    source: str  #: where the released config is published
    head_dim: int
    rope_base: float
    original_length: int  #: L0 (``original_max_position_embeddings``)
    partial_rotary_factor: float
    target_length: int  #: the extended window (``max_position_embeddings``)
    long_factor: tuple[float, ...]
    short_factor: tuple[float, ...]
    attention_factor: float | None  #: None: the config names none, transformers' longrope default applies
    d_rcd: int  #: first searched pair; the pairs below are the NTK fill anchored there

    @property
    def geometry(self) -> dict[str, Any]:
        """As ``model.geometry`` of an experiment spells it."""
        return {"head_dim": self.head_dim, "rope_base": self.rope_base, "original_length": self.original_length,
                "partial_rotary_factor": self.partial_rotary_factor}

    def released_config(self) -> dict[str, Any]:
        """The RoPE keys of the released config.json, as published."""
        out = {"max_position_embeddings": self.target_length, "original_max_position_embeddings": self.original_length,
               "rope_theta": self.rope_base,
               "rope_scaling": {"type": "longrope", "long_factor": list(self.long_factor),
                                "short_factor": list(self.short_factor)}}
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
        return out


_LLAMA3_8B = (
    1, 1.097906416, 1.205398499, 1.323414747, 1.452985542, 1.595242149, 1.751426591, 1.922902493, 2.111166985,
    2.317863779, 2.544797515, 2.79394952, 3.067495105, 3.367822558, 3.697553996, 4.059568257, 4.457026037,
    4.893397485, 5.372492496, 5.898493984, 6.475994392, 7.110035795, 7.806153921, 8.570426477, 9.40952622,
    10.33077921, 11.34222878, 12.45270576, 13.67190555, 15.01047283, 16.48009443, 18.09360142, 19.8650811, 21.81,
    21.87, 21.88, 22.23, 22.28, 22.53, 22.65, 22.73, 22.89, 22.92, 23.18, 23.23, 23.36, 23.42, 23.47, 23.51, 23.52,
    23.75, 23.82, 23.89, 24.06, 24.13, 24.14, 24.3, 24.53, 24.67, 24.75, 24.97, 25.49, 26.01, 26.05,
)
_PHI4_MINI = (
    1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649, 2.446418898,
    2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845, 5.351743533, 5.984965424,
    6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158, 11.70738129, 13.09260651, 14.64173252,
    16.37415215, 18.31155283, 20.47818807, 22.90118105, 25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23, 32.6,
    32.61, 32.64, 32.66, 32.7, 32.71, 32.93, 32.97, 33.28, 33.49, 33.5, 44.16, 47.77,
)

PUBLISHED: dict[str, Published] = {
    p.name: p
    for p in (
        Published("llama3-8b-longrope2", "meta-llama/Meta-Llama-3-8B (LongRoPE2, 8k -> 128k)",
                  "https://github.com/microsoft/nnscaler/blob/main/examples/longrope2/llama3_8b_longrope2_config.json",
                  128, 500000.0, 8192, 1.0, 131072, _LLAMA3_8B, (1.0,) * 64, None, 33),
        Published("phi4-mini-instruct", "microsoft/Phi-4-mini-instruct (LongRoPE2, 4k -> 128k)",
                  "https://huggingface.co/microsoft/Phi-4-mini-instruct/blob/main/config.json",
                  128, 10000.0, 4096, 0.75, 131072, _PHI4_MINI, (1.0,) * 48, None, 31),
    )
}


def get(name: Any) -> Published:
    if name is None:
        raise ConfigError("extension.fixed_factors", f"is null; the fixed_factors method needs a published set, "
                                                     f"allowed: {', '.join(PUBLISHED)}")
    if name not in PUBLISHED:
        raise ConfigError("extension.fixed_factors", f"got {name!r}; allowed: {', '.join(PUBLISHED)}")
    return PUBLISHED[name]


def check(name: Any, geometry: Mapping[str, Any], target_length: int) -> Published:
    """The selected set, checked against the experiment: the factors only mean something for the geometry
    and window they were searched for. One line naming the first difference."""
    p = get(name)
    want = {**p.geometry, "target_length": p.target_length}
    have = {**{"partial_rotary_factor": 1.0, **geometry}, "target_length": target_length}
    for key, value in want.items():
        if abs(float(have[key]) - float(value)) > 1e-9 * max(1.0, abs(float(value))):
            where = "extension.target_length" if key == "target_length" else f"model.geometry.{key}"
            raise ConfigError("extension.fixed_factors", f"{name} was published for {p.model} with {key} = {value:g}; "
                                                         f"this experiment has {where} = {have[key]:g}")
    return p
