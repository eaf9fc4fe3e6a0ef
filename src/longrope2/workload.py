"""What a stage's model computed: tokens through the decoder and the FLOPs actually computed, counted by
hooks on the model (:func:`attach`, called by :func:`models.load_pretrained`), plus the peak GPU memory.
:class:`artifacts.StageRun` writes :func:`snapshot` into the stage's manifest as ``work``, so a benchmark
divides them by the stage's wall time (tokens/s, MFU) without a second measurement.

The count (per forward; a forward run with gradients enabled is trained: x3 for its backward):

- linear layers: 2 x (parameters of the decoder layers) per token;
- attention: 4 x heads x head_dim x layers per (query, key) pair actually attended: a token at position
  p attends to p + 1 keys, so causal attention counts half the square and, with per-document position ids
  (fine-tuning's packed rows, whose masks skip the other documents' blocks), only its own document;
  decoding with a KV cache counts the cache it reads;
- the LM head: 2 x vocabulary x hidden per row it is applied to (the evaluator applies it only at
  labelled positions, generation only at the last one).

Activation-checkpointing recomputation is not counted (model FLOPs, as MFU defines them); padding is.
Nothing here imports torch at import time: StageRun reads it in every stage.
"""

from __future__ import annotations

import sys
import time
from typing import Any

_COUNTS: dict[str, float] = {}
_WINDOW: list[float] = []  # perf_counter of the first forward's start and the last forward's end


def reset() -> None:
    _COUNTS.clear()
    _WINDOW.clear()


def _in_backward() -> bool:
    import torch

    try:
        return torch._C._current_graph_task_id() != -1  # recomputation inside backward (checkpointing)
    except AttributeError:
        return False


def _add(key: str, value: float) -> None:
    _COUNTS[key] = _COUNTS.get(key, 0) + value


def attach(model) -> None:
    """Count every forward of ``model``'s decoder and LM head from now on (once per model)."""
    if getattr(model, "_longrope2_workload", False):
        return
    cfg = model.config
    decoder, head = model.base_model, model.get_output_embeddings()
    layers = getattr(decoder, "layers", None)
    layer_params = sum(p.numel() for p in layers.parameters()) if layers is not None else 0
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    attn_per_pair = 4.0 * heads * head_dim * cfg.num_hidden_layers

    def before_decoder(module, args, kwargs):
        import torch

        if _in_backward():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return
        rows, length = int(ids.shape[0]), int(ids.shape[1])
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = kwargs.get("cache_position")
        if pos is not None:  # a token at position p attends to p + 1 keys (its own document's, when they restart)
            pos = pos.reshape(-1, pos.shape[-1])
            pairs = float((pos.to(torch.float64) + 1).sum()) * (rows if pos.shape[0] == 1 else 1)
        else:  # transformers >= 5.x names the KV cache ``cache``, earlier releases ``past_key_values``
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
            pairs = rows * (length * past + length * (length + 1) / 2)
        tokens = rows * length
        passes = 3 if torch.is_grad_enabled() and module.training else 1
        _add("forwards", 1)
        _add("tokens", tokens)
        _add("trained_tokens", tokens if passes == 3 else 0)
        _add("linear_flops", passes * 2.0 * layer_params * tokens)
        _add("attention_flops", passes * attn_per_pair * pairs)
        if not _WINDOW:
            _WINDOW.append(time.perf_counter())

    def after_decoder(module, args, output):
        if len(_WINDOW) == 2:
            _WINDOW[1] = time.perf_counter()
        elif _WINDOW:
            _WINDOW.append(time.perf_counter())

    def before_head(module, args):
        import torch

        if _in_backward() or not args:
            return
        x = args[0]
        rows = x.numel() // x.shape[-1]
        passes = 3 if torch.is_grad_enabled() and module.training else 1
        _add("head_rows", rows)
        _add("head_flops", passes * 2.0 * module.weight.numel() * rows)

    decoder.register_forward_pre_hook(before_decoder, with_kwargs=True)
    decoder.register_forward_hook(after_decoder)
    if head is not None:
        head.register_forward_pre_hook(before_head)
    model._longrope2_workload = True


def peak_gpu_mib() -> float | None:
    """torch.cuda.max_memory_allocated of this process in MiB; None where CUDA was never used."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20, 1)


def snapshot() -> dict[str, Any] | None:
    """The counts so far (None when no model was attached and no GPU used): tokens, FLOPs by part and in
    all, the compute window (first forward's start to last forward's end, seconds) and peak GPU memory."""
    peak = peak_gpu_mib()
    if not _COUNTS and peak is None:
        return None
    out: dict[str, Any] = {k: (int(v) if k in ("forwards", "tokens", "trained_tokens", "head_rows") else float(v))
                           for k, v in sorted(_COUNTS.items())}
    if _COUNTS:
        out["flops"] = float(sum(v for k, v in _COUNTS.items() if k.endswith("_flops")))
    if len(_WINDOW) == 2:
        out["compute_window_s"] = round(_WINDOW[1] - _WINDOW[0], 3)
    out["peak_gpu_mib"] = peak
    return out
