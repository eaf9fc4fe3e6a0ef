"""Greedy decoding that stays exact when a LongRoPE(2) model's sequence crosses L0.

transformers' ``longrope`` rotary embedding picks one factor set for *all* positions of a forward:
the long factors once ``max(position_ids) + 1 > L0`` (``original_max_position_embeddings``), the short
ones otherwise. A full forward over L0 + 1 tokens therefore rotates every key with the long factors,
but with a KV cache the keys of the first L0 tokens were stored rotated with the short ones. Stock
``generate`` repairs this only for Phi-3 (``Phi3ForCausalLM.prepare_inputs_for_generation`` drops the
cache the first time the sequence exceeds L0); Llama-family models keep mixing short-rotated keys with
long-rotated queries. :func:`greedy_generate` drops and rebuilds the cache at that step for any model,
so every step equals a cache-less full forward.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from transformers import DynamicCache


def switch_length(model) -> int | None:
    """L0 when the model's RoPE switches from short to long factors beyond it (HF longrope), else None."""
    rp = getattr(model.config, "rope_parameters", None) or {}
    if rp.get("rope_type") != "longrope" or list(rp["long_factor"]) == list(rp["short_factor"]):
        return None
    return int(rp["original_max_position_embeddings"])


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | Sequence[int] | None = None, output_scores: bool = False,
                    stop: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Greedy decoding with a KV cache that is rebuilt once, when the sequence first exceeds L0.

    ``input_ids``: (batch, prompt_len) prompts of equal length (no padding). Returns prompt + new tokens,
    like ``model.generate``; with ``output_scores`` also the list of per-step next-token logits
    (batch, vocab). ``eos_token_id`` may be one id or several (e.g. Llama 3's end-of-turn ids). A row that
    has produced an eos id, or for which ``stop(new_tokens)`` (called after every step with the
    (batch, n_new) tokens generated so far) returns True, is finished: it produces the first eos id from
    then on (any token when there is none; callers cut at their stop condition), and decoding ends early
    once every row is finished. Finishing changes no token a row produced before it.
    """
    l0 = switch_length(model)
    # transformers >= 5.x names the argument ``cache``; earlier 5.x releases ``past_key_values``
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = input_ids.to(model.device)
    prompt_len = ids.shape[1]
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    eos = torch.tensor(eos_ids, dtype=torch.long, device=ids.device) if eos_ids else None
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    cache, n_cached, scores = None, 0, []
    for _ in range(max_new_tokens):
        if cache is None or (l0 is not None and n_cached <= l0 < ids.shape[1]):
            # first forward, or first one past L0: the cached keys were rotated with the short factors
            cache, n_cached = DynamicCache(config=model.config), 0
        logits = model(input_ids=ids[:, n_cached:], use_cache=True, logits_to_keep=1, **{cache_arg: cache}).logits[:, -1]
        n_cached = ids.shape[1]
        token = logits.argmax(-1)
        if eos is not None:
            token = torch.where(done, eos[0], token)
            done |= torch.isin(token, eos)
        ids = torch.cat([ids, token[:, None]], dim=1)
        scores.append(logits)
        if stop is not None:
            done |= stop(ids[:, prompt_len:]).to(done.device)
        if done.all():
            break
    return (ids, scores) if output_scores else ids
