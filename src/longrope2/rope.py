"""The one place in the project that computes RoPE frequencies and rescale factors.

Conventions (the LongRoPE2 paper's): ``d`` is the rotary dimension of one head, pair
``i = 0 .. d/2-1`` has frequency ``theta_i = b^(-2i/d)``, and a per-pair factor ``lambda_i`` *divides*
that frequency (``theta'_i = theta_i / lambda_i``) -- the same convention as HF's ``longrope`` factors.

Every method is one function ``fn(geometry, target_length, <named params>) -> RopeScaling`` (the ``METHODS``
registry), mirroring transformers' ``ROPE_INIT_FUNCTIONS``; ``build`` resolves a ``methods.REGISTRY`` name to
its function and rejects parameters the function does not name (transformers' ``_check_received_keys``).
``scaling_from_dict`` validates factor files and re-derives their export. A ``RopeScaling`` knows its
short/long factors, its attention factor, the HF ``rope_parameters`` a checkpoint needs, and can be
applied in place to a loaded model so later stages swap candidates without reloading weights.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import methods as method_registry
from .errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


ROPE_MODEL_TYPES = {"llama", "mistral", "qwen2", "phi3", "gemma", "qwen3"}
ABSOLUTE_POSITION_MODELS = {"gpt2", "bert", "opt", "bloom", "gpt_bigcode"}


@dataclass(frozen=True)
class RopeGeometry:
    """What RoPE scaling depends on: rotary dim (head_dim x partial_rotary_factor), base, L0."""

    head_dim: int
    rope_base: float
    original_length: int
    partial_rotary_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.head_dim <= 0 or self.head_dim % 2:
            raise ConfigError("model.geometry.head_dim", f"must be a positive even integer, got {self.head_dim}")
        if self.rope_base <= 1:
            raise ConfigError("model.geometry.rope_base", f"must be > 1, got {self.rope_base}")
        if self.original_length < 8:
            raise ConfigError("model.geometry.original_length", f"must be >= 8, got {self.original_length}")
        if not 0 < self.partial_rotary_factor <= 1:
            raise ConfigError(
                "model.geometry.partial_rotary_factor", f"must be in (0, 1], got {self.partial_rotary_factor}"
            )
        if self.rotary_dim % 2 or self.rotary_dim == 0:
            raise ConfigError(
                "model.geometry.partial_rotary_factor",
                f"head_dim x partial_rotary_factor must be a positive even integer, got {self.rotary_dim}",
            )

    @property
    def rotary_dim(self) -> int:
        # int() truncation is what transformers does
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def n_pairs(self) -> int:
        return self.rotary_dim // 2

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> "RopeGeometry":
        return cls(
            head_dim=int(m["head_dim"]),
            rope_base=float(m["rope_base"]),
            original_length=int(m["original_length"]),
            partial_rotary_factor=float(m.get("partial_rotary_factor", 1.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "head_dim": self.head_dim,
            "rope_base": self.rope_base,
            "original_length": self.original_length,
            "partial_rotary_factor": self.partial_rotary_factor,
            "rotary_dim": self.rotary_dim,
        }

    @classmethod
    def from_hf_config(cls, config: Any, original_length: int | None = None) -> "RopeGeometry":
        """Read the geometry from a transformers config (object or config.json dict).

        Handles v5 ``rope_parameters`` and the older ``rope_theta``/``rope_scaling`` keys. L0 is, in
        order: the explicit argument, ``original_max_position_embeddings`` (top level or in the rope
        parameters), ``max_position_embeddings``.
        """
        get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
        # a RoPE model names its base or rope parameters; old Llama-family configs may omit both
        has_rope_keys = any(get(k) is not None for k in ("rope_parameters", "rope_theta", "rope_scaling"))
        if get("model_type") in ABSOLUTE_POSITION_MODELS or not (has_rope_keys or get("model_type") in ROPE_MODEL_TYPES):
            raise ConfigError(
                "model", f"model_type {get('model_type')!r} has no rotary position embedding; use a RoPE model "
                "(llama, mistral, qwen2, phi3, ...)"
            )
        rp = get("rope_parameters") or get("rope_scaling") or {}
        if isinstance(rp, Mapping) and rp and all(isinstance(v, Mapping) for v in rp.values()):
            raise ConfigError("model", "per-layer-type rope_parameters (e.g. Gemma sliding/full) are not supported")
        base = rp.get("rope_theta", get("rope_theta", 10000.0))
        prf = rp.get("partial_rotary_factor", get("partial_rotary_factor", None))
        if prf is None:
            prf = 1.0
        head_dim = get("head_dim") or get("hidden_size") // get("num_attention_heads")
        l0 = (
            original_length
            or get("original_max_position_embeddings")
            or rp.get("original_max_position_embeddings")
            or get("max_position_embeddings")
        )
        return cls(int(head_dim), float(base), int(l0), float(prf))


# --------------------------------------------------------------------------------------------------
# Periods and critical dimensions
# --------------------------------------------------------------------------------------------------


def pair_exponents(geom: RopeGeometry) -> np.ndarray:
    """2i/d for every pair, the exponent of the base in the period."""
    return np.arange(0, geom.rotary_dim, 2, dtype=np.float64) / geom.rotary_dim


def periods(geom: RopeGeometry) -> np.ndarray:
    """T_i = 2*pi * b^(2i/d): tokens per full rotation of pair i."""
    return 2 * math.pi * geom.rope_base ** pair_exponents(geom)


def rotations(geom: RopeGeometry, length: int, factors: Sequence[float] | None = None) -> np.ndarray:
    """Full rotations of each pair inside ``length`` tokens (after dividing frequencies by ``factors``)."""
    lam = np.ones(geom.n_pairs) if factors is None else np.asarray(factors, dtype=np.float64)
    return length / (periods(geom) * lam)


def _critical(geom: RopeGeometry, min_rotations: float) -> int:
    x = (geom.rotary_dim / 2) * math.log(geom.original_length / (2 * math.pi * min_rotations)) / math.log(geom.rope_base)
    return int(min(max(math.ceil(x - 1e-9), 0), geom.n_pairs))


def critical_dim(geom: RopeGeometry) -> int:
    """d_tcd: the first pair whose period exceeds L0 (it never completed a rotation in pre-training)."""
    return _critical(geom, 1.0)


def critical_dim_10(geom: RopeGeometry) -> int:
    """d10_tcd: the first pair with fewer than 10 rotations inside L0; lower end of the d_rcd search."""
    return _critical(geom, 10.0)


def continuous_critical_dim(geom: RopeGeometry) -> float:
    """The (fractional) pair index whose period equals L0 exactly; the anchor of critical-dim NTK."""
    return (geom.rotary_dim / 2) * math.log(geom.original_length / (2 * math.pi)) / math.log(geom.rope_base)


def scale_factor(geom: RopeGeometry, target_length: int) -> float:
    if target_length <= geom.original_length:
        raise ConfigError(
            "extension.target_length",
            f"must be above the original window L0={geom.original_length}, got {target_length}",
        )
    return target_length / geom.original_length


def ood_bound_ok(geom: RopeGeometry, target_length: int, factors: Sequence[float]) -> bool:
    """The OOD bound: every pair at/above d_tcd must be rescaled by at least s."""
    s = scale_factor(geom, target_length)
    lam = np.asarray(factors)
    return bool(np.all(lam[critical_dim(geom):] >= s - 1e-9))


def longrope_attention_factor(geom: RopeGeometry, target_length: int) -> float:
    """sqrt(1 + ln(s)/ln(L0)), the factor HF ``longrope`` uses by default."""
    s = scale_factor(geom, target_length)
    return math.sqrt(1 + math.log(s) / math.log(geom.original_length))


def yarn_attention_factor(s: float) -> float:
    return 0.1 * math.log(s) + 1.0 if s > 1 else 1.0


# --------------------------------------------------------------------------------------------------
# Scaling result
# --------------------------------------------------------------------------------------------------


@dataclass
class RopeScaling:
    """Short/long per-pair factors plus attention factor: everything needed to evaluate or export."""

    method: str
    geometry: RopeGeometry
    target_length: int
    long_factor: np.ndarray
    short_factor: np.ndarray
    attention_factor: float = 1.0
    hf_rope_parameters: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def switches(self) -> bool:
        """True when short and long factors differ, i.e. the model switches at L0 like HF longrope."""
        return not np.allclose(self.long_factor, self.short_factor, rtol=0, atol=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target_length": self.target_length,
            "scale": self.target_length / self.geometry.original_length,
            "geometry": self.geometry.to_dict(),
            "long_factor": [float(x) for x in self.long_factor],
            "short_factor": [float(x) for x in self.short_factor],
            "attention_factor": float(self.attention_factor),
            "hf_rope_parameters": self.hf_rope_parameters,
            **self.extra,
        }


def _scaling(method, geom, target, long_factor, short_factor=None, attention_factor=1.0, hf=None, **extra):
    long_factor = np.asarray(long_factor, dtype=np.float64)
    if long_factor.shape != (geom.n_pairs,):
        raise ConfigError("factors", f"need {geom.n_pairs} per-pair factors, got {long_factor.shape[0]}")
    short = np.ones(geom.n_pairs) if short_factor is None else np.asarray(short_factor, dtype=np.float64)
    params = {"rope_theta": geom.rope_base, **(hf or {})}
    if geom.partial_rotary_factor != 1.0:
        params["partial_rotary_factor"] = geom.partial_rotary_factor
    return RopeScaling(method, geom, int(target), long_factor, short, float(attention_factor), params, extra)


# --------------------------------------------------------------------------------------------------
# Methods: one function each, same signature
# --------------------------------------------------------------------------------------------------


def none(geom: RopeGeometry, target_length: int) -> RopeScaling:
    """The original RoPE, no scaling (extrapolation baseline)."""
    ones = np.ones(geom.n_pairs)
    return _scaling("none", geom, target_length, ones, ones, 1.0, {"rope_type": "default"})


def pi(geom: RopeGeometry, target_length: int) -> RopeScaling:
    """Position interpolation: every pair divided by s; HF ``linear``."""
    s = scale_factor(geom, target_length)
    lam = np.full(geom.n_pairs, s)
    return _scaling("pi", geom, target_length, lam, lam, 1.0, {"rope_type": "linear", "factor": s})


def _new_base(geom: RopeGeometry, target_length: int, method: str, lam: np.ndarray, new_base: float, **extra):
    # A new base is exactly representable in a stock config: rope_type default, rope_theta = b'
    s = _scaling(method, geom, target_length, lam, lam, 1.0, {"rope_type": "default"}, new_base=new_base, **extra)
    s.hf_rope_parameters["rope_theta"] = new_base
    return s


def ntk_static(geom: RopeGeometry, target_length: int) -> RopeScaling:
    """NTK-aware static: b' = b * s^(d/(d-2)), i.e. lambda_i = s^(2i/(d-2))."""
    s = scale_factor(geom, target_length)
    d = geom.rotary_dim
    new_base = geom.rope_base * s ** (d / (d - 2))
    return _new_base(geom, target_length, "ntk_static", (new_base / geom.rope_base) ** pair_exponents(geom), new_base)


def ntk(geom: RopeGeometry, target_length: int) -> RopeScaling:
    """Critical-dimension NTK (the LongRoPE2 paper's "NTK"): the pair whose period is L0 gets period L.

    b_ntk = b^(ln(L/2pi)/ln(L0/2pi)), lambda_i = (b_ntk/b)^(2i/d).
    """
    scale_factor(geom, target_length)
    expo = math.log(target_length / (2 * math.pi)) / math.log(geom.original_length / (2 * math.pi))
    new_base = geom.rope_base**expo
    return _new_base(geom, target_length, "ntk", (new_base / geom.rope_base) ** pair_exponents(geom), new_base)


def ntk_below(geom: RopeGeometry, d_rcd: int, anchor_factor: float) -> np.ndarray:
    """NTK fill below the critical pair: lambda_i = anchor^(i/d_rcd), i < d_rcd (LongRoPE2 §3.2)."""
    i = np.arange(d_rcd, dtype=np.float64)
    return anchor_factor ** (i / d_rcd) if d_rcd > 0 else i


def _check_rcd(geom: RopeGeometry, d_rcd: int) -> int:
    if not 1 <= int(d_rcd) <= geom.n_pairs - 1:
        raise ConfigError("d_rcd", f"must be in [1, {geom.n_pairs - 1}] for {geom.n_pairs} pairs, got {d_rcd}")
    return int(d_rcd)


def ntk_rcd(geom: RopeGeometry, target_length: int, *, d_rcd: int) -> RopeScaling:
    """Critical-dimension NTK anchored at the (searched) real critical dimension: lambda_{d_rcd} = s."""
    s = scale_factor(geom, target_length)
    d_rcd = _check_rcd(geom, d_rcd)
    new_base = geom.rope_base * s ** (geom.rotary_dim / (2 * d_rcd))
    lam = (new_base / geom.rope_base) ** pair_exponents(geom)
    return _new_base(geom, target_length, "ntk_rcd", lam, new_base, d_rcd=d_rcd)


def _yarn_ramp(geom: RopeGeometry, beta_fast: float, beta_slow: float, truncate: bool) -> np.ndarray:
    """1 where a pair is interpolated (divided by s), 0 where it is extrapolated, linear between.

    Computed in the dimension space exactly as transformers' yarn (floor/ceil when ``truncate``).
    """
    d, b, l0 = geom.rotary_dim, geom.rope_base, geom.original_length

    def corr(n_rot: float) -> float:
        return (d * math.log(l0 / (n_rot * 2 * math.pi))) / (2 * math.log(b))

    low, high = corr(beta_fast), corr(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    return np.clip((np.arange(geom.n_pairs, dtype=np.float64) - low) / (high - low), 0, 1)


def yarn(
    geom: RopeGeometry,
    target_length: int,
    *,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> RopeScaling:
    """YaRN: ramp between extrapolation (fast pairs) and PI (slow pairs), temperature 0.1 ln s + 1."""
    s = scale_factor(geom, target_length)
    ramp = _yarn_ramp(geom, beta_fast, beta_slow, truncate)
    # theta' = theta * ((1-ramp) + ramp/s)  =>  lambda = 1 / ((1-ramp) + ramp/s)
    lam = 1.0 / ((1.0 - ramp) + ramp / s)
    hf = {
        "rope_type": "yarn",
        "factor": s,
        "original_max_position_embeddings": geom.original_length,
        "beta_fast": beta_fast,
        "beta_slow": beta_slow,
    }
    if not truncate:
        hf["truncate"] = False
    return _scaling("yarn", geom, target_length, lam, lam, yarn_attention_factor(s), hf)


def yarn_rcd(geom: RopeGeometry, target_length: int, *, d_rcd: int) -> RopeScaling:
    """YaRN whose interpolation ramp ends at the real critical dimension (pairs >= d_rcd get s).

    Chosen so that pair d_rcd rotates once inside L0 (beta_slow) while the fast boundary stays at 32
    rotations: beta_slow = L0 / T_{d_rcd}.
    """
    d_rcd = _check_rcd(geom, d_rcd)
    beta_slow = float(geom.original_length / periods(geom)[d_rcd])
    out = yarn(geom, target_length, beta_fast=32.0, beta_slow=beta_slow, truncate=False)
    out.method = "yarn_rcd"
    out.extra["d_rcd"] = d_rcd
    return out


def _longrope_export(geom: RopeGeometry, target_length: int, attention_factor: float, long, short) -> dict:
    return {
        "rope_type": "longrope",
        "factor": target_length / geom.original_length,
        "original_max_position_embeddings": geom.original_length,
        "attention_factor": attention_factor,
        "long_factor": [float(x) for x in long],
        "short_factor": [float(x) for x in short],
    }


def longrope(
    geom: RopeGeometry,
    target_length: int,
    long_factor: Sequence[float] | None = None,
    short_factor: Sequence[float] | None = None,
) -> RopeScaling:
    """LongRoPE (v1) parametrisation: free monotone per-pair factors in [1, 1.25 s] (searched on plain PPL).

    Without ``long_factor`` it returns PI as the neutral starting point. The v1 ``n_hat`` un-interpolated
    initial tokens have no stock-transformers equivalent and are not modelled.
    """
    s = scale_factor(geom, target_length)
    lam = np.full(geom.n_pairs, s) if long_factor is None else np.asarray(long_factor, dtype=np.float64)
    short = np.ones(geom.n_pairs) if short_factor is None else np.asarray(short_factor, dtype=np.float64)
    af = longrope_attention_factor(geom, target_length)
    return _scaling("longrope", geom, target_length, lam, short, af, _longrope_export(geom, target_length, af, lam, short))


def longrope2_factors(geom: RopeGeometry, d_rcd: int, high_factors: Sequence[float]) -> np.ndarray:
    """Full factor vector of a LongRoPE2 candidate: searched pairs >= d_rcd, NTK fill below."""
    d_rcd = _check_rcd(geom, d_rcd)
    high = np.asarray(high_factors, dtype=np.float64)
    if high.shape != (geom.n_pairs - d_rcd,):
        raise ConfigError("long_factor", f"need {geom.n_pairs - d_rcd} factors for pairs >= {d_rcd}, got {high.shape[0]}")
    return np.concatenate([ntk_below(geom, d_rcd, float(high[0])), high])


def longrope2(
    geom: RopeGeometry,
    target_length: int,
    d_rcd: int | None = None,
    high_factors: Sequence[float] | None = None,
) -> RopeScaling:
    """LongRoPE2: pairs >= d_rcd take searched factors in [s, 2s]; pairs below follow NTK anchored there.

    Short factors are 1 (original RoPE inside L0), attention factor sqrt(1 + ln s / ln L0). Without
    arguments it returns the search's natural seed: d_rcd = d_tcd, all high pairs = s.
    """
    s = scale_factor(geom, target_length)
    d_rcd = critical_dim(geom) if d_rcd is None else d_rcd
    if high_factors is None:
        high_factors = np.full(geom.n_pairs - d_rcd, s)
    lam = longrope2_factors(geom, d_rcd, high_factors)
    short = np.ones(geom.n_pairs)
    af = longrope_attention_factor(geom, target_length)
    return _scaling(
        "longrope2", geom, target_length, lam, short, af, _longrope_export(geom, target_length, af, lam, short), d_rcd=int(d_rcd)
    )


def fixed_factors(
    geom: RopeGeometry,
    target_length: int,
    *,
    long_factor: Sequence[float],
    short_factor: Sequence[float],
    attention_factor: float | None = None,
) -> RopeScaling:
    """Published per-pair factors taken verbatim (``extension.fixed_factors``: LongRoPE2's released sets).

    Exported as HF ``longrope``; ``attention_factor=None`` is transformers' default sqrt(1 + ln s / ln L0),
    what a released config without one gets.
    """
    scale_factor(geom, target_length)
    af = longrope_attention_factor(geom, target_length) if attention_factor is None else float(attention_factor)
    out = _scaling("fixed_factors", geom, target_length, long_factor, short_factor, af)
    out.hf_rope_parameters.update(_longrope_export(geom, target_length, af, out.long_factor, out.short_factor))
    return out


def as_is(geom: RopeGeometry, target_length: int, *, rope_parameters: Mapping[str, Any]) -> RopeScaling:
    """A checkpoint's own rope parameters, unchanged (an already-extended release such as Phi-3-mini-128k).

    ``geom`` is the checkpoint's own geometry (its L0) and ``target_length`` its window. The frequencies and
    attention factor its rope type gives are written as per-pair long/short factors (HF ``longrope``, which
    every stock model type loads): for a ``longrope`` checkpoint that is its ``rope_scaling`` verbatim.
    """
    rope_type = rope_parameters.get("rope_type", rope_parameters.get("type", "default"))
    if rope_type == "default" and float(rope_parameters.get("rope_theta", geom.rope_base)) == geom.rope_base:
        raise ConfigError("as_is", "the checkpoint has no rope scaling of its own (rope_type default); as_is "
                                   "evaluates an already-extended checkpoint: name one in extension.as_is")
    own = from_hf_rope_parameters(geom, rope_parameters, target_length)
    target = own.target_length
    out = _scaling("as_is", geom, target, own.long_factor, own.short_factor, own.attention_factor,
                   checkpoint_rope_type=rope_type)
    out.hf_rope_parameters.update(_longrope_export(geom, target, out.attention_factor, out.long_factor,
                                                   out.short_factor))
    return out


#: rope functions by name (``methods.Method.rope_function``). Parameters after ``target_length`` are keyword-only,
#: except longrope/longrope2's, which callers (search, tests) still pass positionally.
METHODS: dict[str, Callable[..., RopeScaling]] = {
    "none": none,
    "pi": pi,
    "ntk_static": ntk_static,
    "ntk": ntk,
    "ntk_rcd": ntk_rcd,
    "yarn": yarn,
    "yarn_rcd": yarn_rcd,
    "longrope": longrope,
    "longrope2": longrope2,
    "fixed_factors": fixed_factors,
    "as_is": as_is,
}


def parameters(fn: Callable[..., RopeScaling]) -> list[str]:
    """The parameters a method function names after ``target_length`` (the only keys ``build`` accepts)."""
    return list(inspect.signature(fn).parameters)[2:]


def build(method: str, geom: RopeGeometry, target_length: int, **params: Any) -> RopeScaling:
    """Factors of a ``methods.REGISTRY`` method, via its ``rope_function``; ``.method`` is the registry name.

    Unknown parameter names are errors, not silently ignored: a misspelt ``d_rcd`` would otherwise fall
    back to a default and produce plausible but wrong factors.
    """
    fn = METHODS[method_registry.get(method).rope_function]
    allowed = parameters(fn)
    for key in params:
        if key not in allowed:
            raise ConfigError(method, f"unknown parameter {key!r}; allowed: {', '.join(allowed) or '(none)'}")
    sig = inspect.signature(fn).parameters
    for key in allowed:
        if sig[key].default is inspect.Parameter.empty and key not in params:
            raise ConfigError(method, f"missing parameter {key!r}; allowed: {', '.join(allowed)}")
    out = fn(geom, target_length, **params)
    out.method = method
    return out


# --------------------------------------------------------------------------------------------------
# Factor files (factors.json, rope.json): validated on read, export rebuilt from the factors
# --------------------------------------------------------------------------------------------------

#: rope functions exported as HF ``longrope`` (free per-pair factors); every other one has its own HF form
LONGROPE_FORM = ("longrope", "longrope2", "fixed_factors", "as_is")
_REQUIRED = ("method", "geometry", "target_length", "long_factor", "short_factor", "attention_factor")
_KNOWN = {*_REQUIRED, "scale", "hf_rope_parameters"}
_REL_TOL = 1e-9


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _positive(x: Any) -> bool:
    return _is_number(x) and math.isfinite(x) and x > 0


def _show(x: Any, width: int = 60) -> str:
    """A value for a one-line message (numpy scalars as plain numbers, long values cut)."""
    if _is_number(x):
        x = int(x) if _is_int(x) else float(x)
    text = repr(x) if not isinstance(x, np.ndarray) else repr(x.tolist())
    return text if len(text) <= width else text[: width - 3] + "..."


def _message(e: ConfigError) -> str:
    return str(e)[len(e.key) + 2:]


def _geometry_from_dict(g: Any, fail: Callable[[str, str], ConfigError]) -> RopeGeometry:
    if not isinstance(g, Mapping):
        raise fail("geometry", f"must be a mapping (head_dim, rope_base, original_length, ...), got {_show(g)}")
    for key in ("head_dim", "rope_base", "original_length"):
        if key not in g:
            raise fail(f"geometry.{key}", "missing")
    for key in ("head_dim", "original_length"):
        if not _is_int(g[key]):
            raise fail(f"geometry.{key}", f"must be an integer, got {_show(g[key])}")
    for key in ("rope_base", "partial_rotary_factor"):
        if key in g and not (_is_number(g[key]) and math.isfinite(g[key])):
            raise fail(f"geometry.{key}", f"must be a finite number, got {_show(g[key])}")
    try:
        geom = RopeGeometry(int(g["head_dim"]), float(g["rope_base"]), int(g["original_length"]),
                            float(g.get("partial_rotary_factor", 1.0)))
    except ConfigError as e:
        raise fail(f"geometry.{e.key.rsplit('.', 1)[-1]}", _message(e)) from None
    if "rotary_dim" in g and g["rotary_dim"] != geom.rotary_dim:
        raise fail("geometry.rotary_dim", f"is {_show(g['rotary_dim'])}, but head_dim x partial_rotary_factor = "
                                          f"{geom.rotary_dim}")
    return geom


def _factors(x: Any, key: str, n: int, fail: Callable[[str, str], ConfigError]) -> np.ndarray:
    if not isinstance(x, (list, tuple, np.ndarray)) or np.ndim(x) != 1:
        raise fail(key, f"must be a list of {n} numbers, got {_show(x)}")
    if len(x) != n:
        raise fail(key, f"need {n} per-pair factors (n_pairs of the geometry), got {len(x)}")
    for i, v in enumerate(x):
        if not _positive(v):
            raise fail(f"{key}[{i}]", f"must be a finite number > 0, got {_show(v)}")
    return np.asarray(x, dtype=np.float64)


def _first_mismatch(have: np.ndarray, want: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isclose(have, want, rtol=_REL_TOL, atol=0))
    return int(bad[0]) if bad.size else None


def _difference(have: Any, want: Any, path: str) -> tuple[str, str] | None:
    """First place where a stored value differs from the derived one: (dotted path, what differs)."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return path, f"must be a mapping, got {_show(have)}"
        for k in want:
            if k not in have:
                return f"{path}.{k}", f"missing; derived from the factors: {_show(want[k])}"
            found = _difference(have[k], want[k], f"{path}.{k}")
            if found:
                return found
        for k in have:
            if k not in want:
                return f"{path}.{k}", f"{_show(have[k])} is not among the parameters derived from the factors"
        return None
    if isinstance(want, (list, tuple, np.ndarray)):
        if not isinstance(have, (list, tuple, np.ndarray)) or len(have) != len(want):
            return path, f"{_show(have)} differs from {_show(want)} derived from the factors"
        for i, (a, b) in enumerate(zip(have, want)):
            found = _difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    if _is_number(want):
        same = _is_number(have) and math.isclose(float(have), float(want), rel_tol=_REL_TOL, abs_tol=0)
    else:
        same = type(have) is type(want) and have == want
    return None if same else (path, f"{_show(have)} differs from {_show(want)} derived from the factors")


def scaling_from_dict(d: Mapping[str, Any], source: str = "factors") -> RopeScaling:
    """Rebuild a RopeScaling from ``RopeScaling.to_dict()`` (a factors.json / rope.json), validating it.

    Evaluation applies long/short/attention factors, so the HF export is re-derived from exactly those
    (never taken from a stored ``hf_rope_parameters`` that could disagree); methods with their own HF form
    must have the factors that form reproduces. Any problem is one ``ConfigError`` line
    ``<source>: <field>: <what is wrong>``. Extra keys (d_rcd, fitness, search, ...) stay in ``.extra``.
    """

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(source, f"{key}: {message}")

    if not isinstance(d, Mapping):
        raise ConfigError(source, f"does not hold a RopeScaling dict (RopeScaling.to_dict()), got {_show(d)}")
    for key in _REQUIRED:
        if key not in d:
            raise fail(key, "missing, so this does not hold a RopeScaling dict (RopeScaling.to_dict())")
    method = d["method"]
    if not isinstance(method, str) or method not in method_registry.REGISTRY:
        raise fail("method", f"unknown method {_show(method)}; allowed: {', '.join(method_registry.REGISTRY)}")
    fn_name = method_registry.REGISTRY[method].rope_function
    fn = METHODS[fn_name]

    geom = _geometry_from_dict(d["geometry"], fail)
    n, l0 = geom.n_pairs, geom.original_length
    target = d["target_length"]
    if not _is_int(target) or target <= l0:
        raise fail("target_length", f"must be an integer above original_length={l0}, got {_show(target)}")
    target = int(target)
    if "scale" in d and not (_is_number(d["scale"]) and math.isclose(d["scale"], target / l0, rel_tol=_REL_TOL)):
        raise fail("scale", f"must be target_length / original_length = {target / l0!r}, got {_show(d['scale'])}")
    long = _factors(d["long_factor"], "long_factor", n, fail)
    short = _factors(d["short_factor"], "short_factor", n, fail)
    attention = d["attention_factor"]
    if not _positive(attention):
        raise fail("attention_factor", f"must be a finite number > 0, got {_show(attention)}")
    attention = float(attention)

    takes_rcd = "d_rcd" in parameters(fn)
    d_rcd = d.get("d_rcd")
    if "d_rcd" in d:
        lo = 0 if fn_name == "longrope" else 1  # all-pairs (v1-space) searches write d_rcd = 0: no NTK fill
        if not _is_int(d_rcd) or not lo <= d_rcd <= n - 1:
            raise fail("d_rcd", f"must be an integer in [{lo}, {n - 1}] for {n} pairs, got {_show(d_rcd)}")
        d_rcd = int(d_rcd)
    stored_hf = d.get("hf_rope_parameters")
    if stored_hf is not None and not isinstance(stored_hf, Mapping):
        raise fail("hf_rope_parameters", f"must be a mapping, got {_show(stored_hf)}")

    if fn_name in LONGROPE_FORM:
        if fn_name == "longrope2" and d_rcd is not None:
            fill = longrope2_factors(geom, d_rcd, long[d_rcd:])
            i = _first_mismatch(long, fill)
            if i is not None:
                raise fail(f"long_factor[{i}]", f"{_show(long[i])} is not the NTK fill below d_rcd={d_rcd}: expected "
                                                f"{_show(fill[i])} = long_factor[{d_rcd}]^({i}/{d_rcd})")
        out = _scaling(method, geom, target, long, short, attention,
                       _longrope_export(geom, target, attention, long, short))
    else:
        if takes_rcd and d_rcd is None:
            raise fail("d_rcd", f"missing; {method} is anchored at the real critical dimension")
        # d_rcd from the file; the form's own knobs (yarn's betas) from its stored HF parameters, checked below
        params = {k: d[k] if k in d else stored_hf[k] for k in parameters(fn)
                  if k in d or (stored_hf is not None and k in stored_hf)}
        try:
            out = build(method, geom, target, **params)
        except ConfigError as e:
            raise ConfigError(source, str(e)) from None
        except (TypeError, ValueError, ArithmeticError) as e:
            raise fail(method, f"cannot recompute the factors from {_show(params)} ({type(e).__name__}: {e})") from None
        inputs = ", ".join(f"{k}={_show(v)}" for k, v in params.items())
        inputs = f"geometry, target_length and {inputs}" if inputs else "geometry and target_length"
        for key, have, want in (("long_factor", long, out.long_factor), ("short_factor", short, out.short_factor)):
            i = _first_mismatch(have, want)
            if i is not None:
                raise fail(f"{key}[{i}]", f"{_show(have[i])} differs from {_show(want[i])}, the {method} factor "
                                          f"recomputed from {inputs}")
        if not math.isclose(attention, out.attention_factor, rel_tol=_REL_TOL):
            raise fail("attention_factor", f"{_show(attention)} differs from {_show(out.attention_factor)}, recomputed for {method}")
        for key, want in out.extra.items():  # derived extras (new_base, d_rcd) must agree too
            found = _difference(d[key], want, key) if key in d else None
            if found:
                raise fail(found[0], found[1].replace("derived from the factors", f"recomputed for {method}"))
        out.long_factor, out.short_factor, out.attention_factor = long, short, attention

    if stored_hf is not None:
        found = _difference(stored_hf, out.hf_rope_parameters, "hf_rope_parameters")
        if found:
            raise fail(found[0], f"{found[1]} (stale or hand-edited; the export follows the factors)")
    out.extra = {**out.extra, **{k: v for k, v in d.items() if k not in _KNOWN}}
    return out


def from_hf_rope_parameters(geom: RopeGeometry, params: Mapping[str, Any], target_length: int | None = None) -> RopeScaling:
    """Rebuild a RopeScaling from a checkpoint's rope parameters (the inverse of the export)."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    base = float(params.get("rope_theta", geom.rope_base))
    if rope_type == "longrope":
        target = target_length or int(round(params["factor"] * geom.original_length))
        out = longrope(geom, target, params["long_factor"], params["short_factor"])
        if params.get("attention_factor") is not None:
            out.attention_factor = float(params["attention_factor"])
            out.hf_rope_parameters["attention_factor"] = out.attention_factor
        return out
    if rope_type == "linear":
        return pi(geom, int(round(params["factor"] * geom.original_length)))
    if rope_type == "yarn":
        target = int(round(params["factor"] * geom.original_length))
        return yarn(geom, target, beta_fast=params.get("beta_fast") or 32.0, beta_slow=params.get("beta_slow") or 1.0,
                    truncate=params.get("truncate", True))
    if rope_type == "default":
        lam = (base / geom.rope_base) ** pair_exponents(geom)
        target = target_length or geom.original_length + 1
        if base == geom.rope_base:
            return none(geom, max(target, geom.original_length + 1))
        return _new_base(geom, target, "new_base", lam, base)
    raise ConfigError("rope_type", f"unsupported rope_type {rope_type!r}; allowed: default, linear, yarn, longrope")


# --------------------------------------------------------------------------------------------------
# Frequencies and in-place application to a loaded model
# --------------------------------------------------------------------------------------------------


def inv_freq(geom: RopeGeometry, factors: Sequence[float] | None = None, device=None):
    """theta_i / lambda_i as a float32 tensor, computed the way transformers' longrope does."""
    shape = torch.arange(0, geom.rotary_dim, 2, dtype=torch.int64, device=device).float() / geom.rotary_dim
    lam = torch.ones(geom.n_pairs, device=device) if factors is None else torch.tensor(
        np.asarray(factors, dtype=np.float64), dtype=torch.float32, device=device
    )
    return 1.0 / (lam * geom.rope_base**shape)


def rotary_modules(model) -> list:
    """The rotary-embedding modules of a transformers model (``model.model.rotary_emb`` and the like)."""
    mods = [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]
    if not mods:
        raise ConfigError("model", f"{type(model).__name__} has no rotary embedding module (inv_freq/attention_scaling)")
    return mods


#: model types whose config accepts only ``default``/``longrope`` rope types (PI/YaRN become explicit longrope)
LONGROPE_ONLY_MODEL_TYPES = {"phi3"}


def hf_rope_parameters(config, scaling: RopeScaling) -> dict[str, Any]:
    """The rope parameters a checkpoint of this model type needs for ``scaling``."""
    params = dict(scaling.hf_rope_parameters)
    if getattr(config, "model_type", None) in LONGROPE_ONLY_MODEL_TYPES and params["rope_type"] not in ("default", "longrope"):
        geom = scaling.geometry
        params = {"rope_theta": geom.rope_base, **_longrope_export(geom, scaling.target_length, scaling.attention_factor,
                                                                   scaling.long_factor, scaling.short_factor)}
        if geom.partial_rotary_factor != 1.0:
            params["partial_rotary_factor"] = geom.partial_rotary_factor
    return params


def apply_scaling(model, scaling: RopeScaling) -> None:
    """Swap the RoPE of an already loaded model in place (no weight reload).

    Short and long frequencies are installed the way transformers' longrope expects them, so its own
    ``dynamic_rope_update`` switches by ``max(position_ids)+1 > L0`` exactly as an exported checkpoint
    does; the config's rope parameters are updated too so ``save_pretrained`` writes the right ones.
    """
    geom = scaling.geometry
    export_config(model.config, scaling)
    for mod in rotary_modules(model):
        device = mod.inv_freq.device
        if mod.inv_freq.shape[-1] != geom.n_pairs:
            raise ConfigError(
                "model.geometry", f"model has {mod.inv_freq.shape[-1]} rotary pairs, geometry says {geom.n_pairs}"
            )
        short = inv_freq(geom, scaling.short_factor, device)
        long = inv_freq(geom, scaling.long_factor, device)
        mod.attention_scaling = float(scaling.attention_factor)
        if scaling.switches:
            # transformers' longrope switch (dynamic_rope_update) reads these attributes
            mod.rope_type = "longrope"
            mod.inv_freq = short.clone()
            mod.original_inv_freq = short.clone()
            mod.long_inv_freq = long
        else:
            mod.rope_type = "default"
            mod.inv_freq = long.clone()
            mod.original_inv_freq = long.clone()
            if hasattr(mod, "long_inv_freq"):
                del mod.long_inv_freq


def export_config(config, scaling: RopeScaling) -> None:
    """Write a method's rope parameters into a transformers config (what a saved checkpoint carries)."""
    config.rope_parameters = hf_rope_parameters(config, scaling)
    config.max_position_embeddings = max(int(scaling.target_length), int(getattr(config, "max_position_embeddings", 0) or 0))
    if config.rope_parameters["rope_type"] in ("longrope", "yarn"):
        config.rope_parameters["original_max_position_embeddings"] = scaling.geometry.original_length
        if hasattr(config, "original_max_position_embeddings"):
            # Phi-3 style configs keep L0 at the top level and give it priority
            config.original_max_position_embeddings = scaling.geometry.original_length


class RowwiseRotary(torch.nn.Module):
    """Per-row short/long RoPE for mixed context window training (LongRoPE2 §3.3), in one batch.

    Row r uses the long factors iff ``max(position_ids[r]) + 1 > L0`` -- the rule transformers applies to
    a whole forward at inference -- so short rows (documents <= L0, positions restarting per document)
    keep the original RoPE and long rows get the searched factors. ``always_long`` gives every row the
    long factors (the long-only ablation: same rows, only the RoPE differs). Same call signature as a
    transformers rotary module: ``cos, sin = rot(x, position_ids)``.
    """

    def __init__(self, scaling: RopeScaling, device=None, always_long: bool = False):
        super().__init__()
        geom = scaling.geometry
        self.register_buffer("short_inv_freq", inv_freq(geom, scaling.short_factor, device), persistent=False)
        self.register_buffer("long_inv_freq", inv_freq(geom, scaling.long_factor, device), persistent=False)
        self.attention_scaling = float(scaling.attention_factor)
        self.original_length = 0 if always_long else geom.original_length

    def forward(self, x, position_ids, **_):
        long_row = (position_ids.max(dim=-1).values + 1 > self.original_length)[:, None]
        inv = torch.where(long_row, self.long_inv_freq[None], self.short_inv_freq[None])  # [B, pairs]
        freqs = position_ids[..., None].float() * inv[:, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(x.dtype), sin.to(x.dtype)
