"""Greedy decoding that stays exact when a LongRoPE(2) model's sequence crosses L0.

transformers' ``longrope`` rotary embedding picks one factor set for *all* positions of a forward:
the long factors once ``max(position_ids) + 1 > L0`` (``original_max_position_embeddings``), the short
ones otherwise. A full forward over L0 + 1 tokens therefore rotates every key with the long factors,
but with a KV cache the keys of the first L0 tokens were stored rotated with the short ones. Stock
``generate`` repairs this only for Phi-3 (``Phi3ForCausalLM.prepare_inputs_for_generation`` drops the
cache the first time the sequence exceeds L0); Llama-family models keep mixing short-rotated keys with
long-rotated queries. :func:`greedy_generate` drops and rebuilds the cache at that step for any model,
so every step equals a cache-less full forward.

Prompts of different lengths share a batch left-padded, each row with its own positions from 0 (RoPE
rotates by position: padding must not shift them). The factor choice follows the batch's longest row, so
a padded batch is exact only when every row stays on one side of L0 for the whole decoding, on the side
its own cache-less decoding would be at every step: :func:`batch_class` says which prompts may share one.
"""

from __future__ import annotations

import inspect
from typing import Callable, Hashable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from . import scoring


def switch_length(model) -> int | None:
    """L0 when the model's RoPE switches from short to long factors beyond it (HF longrope), else None."""
    rp = getattr(model.config, "rope_parameters", None) or {}
    if rp.get("rope_type") != "longrope" or list(rp["long_factor"]) == list(rp["short_factor"]):
        return None
    return int(rp["original_max_position_embeddings"])


def batch_class(l0: int | None, prompt_len: int, max_new_tokens: int) -> Hashable:
    """Prompts with equal classes may share a (left-padded) batch of :func:`greedy_generate`.

    A forward uses the long factors when its longest row exceeds L0; a row decoded alone uses them once its
    own sequence does. The forwards of a row of ``prompt_len`` tokens see ``prompt_len`` ... ``prompt_len +
    max_new_tokens - 1`` tokens, so rows that stay within L0 to the end ("short"), or exceed it from the
    prefill on ("long"), agree with the batch at every step whatever their lengths. A row that crosses L0
    mid-generation shares a batch only with rows of its own length, which cross at the same step (the cache
    is rebuilt there). Without a factor switch (``l0`` None) any lengths mix.
    """
    if l0 is None:
        return "any"
    if prompt_len > l0:
        return "long"
    if prompt_len + max_new_tokens - 1 <= l0:
        return "short"
    return ("crosses", prompt_len)


class _SlotLayer(DynamicLayer):
    """A DynamicLayer over preallocated (batch, heads, capacity, dim) buffers, zero-filled.

    ``update`` writes the new keys and values in place (DynamicLayer concatenates: a copy of the whole cache
    at every step) and returns views. ``window(rows, start, length)`` sets what the model sees: the rows, and
    the slot of their first cached token; prefilling a run of equal-length rows of a left-padded batch writes
    their keys right-aligned, and the padding slots stay zero (finite: masked out, they add exact zeros)."""

    _layer_type = None  # never registered as a cache layer type of transformers

    def __init__(self, batch: int, capacity: int):
        super().__init__()
        self.batch, self.capacity = batch, capacity
        self.key_buf = self.value_buf = None
        self.rows, self.start, self.length = slice(None), 0, 0

    def window(self, rows: slice, start: int, length: int) -> None:
        self.rows, self.start, self.length = rows, start, length
        if self.key_buf is not None:
            self.keys = self.key_buf[rows, :, start:start + length]
            self.values = self.value_buf[rows, :, start:start + length]

    @staticmethod
    def _zeros_like(states: torch.Tensor, batch: int, slots: int) -> torch.Tensor:
        return states.new_zeros((batch, states.shape[1], slots, states.shape[-1]))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.key_buf is None:
            self.device = key_states.device
            self.key_buf = self._zeros_like(key_states, self.batch, self.capacity)
            self.value_buf = self._zeros_like(value_states, self.batch, self.capacity)
            self.is_initialized = True
        at, end = self.start + self.length, self.start + self.length + key_states.shape[-2]
        if end > self.key_buf.shape[-2]:  # not sized for this (greedy_generate sizes it): grow
            grow = max(end, 2 * self.key_buf.shape[-2]) - self.key_buf.shape[-2]
            self.key_buf = torch.cat([self.key_buf, self._zeros_like(self.key_buf, self.batch, grow)], -2)
            self.value_buf = torch.cat([self.value_buf, self._zeros_like(self.value_buf, self.batch, grow)], -2)
        self.key_buf[self.rows, :, at:end] = key_states
        self.value_buf[self.rows, :, at:end] = value_states
        self.window(self.rows, self.start, end - self.start)
        return self.keys, self.values


def _new_cache(model, batch: int, capacity: int) -> tuple[DynamicCache, bool]:
    """A DynamicCache for the model whose plain (full-attention) layers write into preallocated buffers;
    True when every layer is one (sliding-window or recurrent layers keep transformers' own)."""
    cache = DynamicCache(config=model.config)
    slotted = bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
    cache.layers = [_SlotLayer(batch, capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache, slotted


def padding_supported(model) -> bool:
    """Whether :func:`greedy_generate` takes prompts of different lengths for this model (every cache layer a
    plain full-attention one); if not, only rows of one length share a batch."""
    return _new_cache(model, 1, 1)[1]


def _as_batch(model, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(left-padded ids, per-row prompt lengths), both on the model's device; leading columns that are
    padding in every row are dropped."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.ndim != 2:
            raise ValueError(f"greedy_generate: input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        ids = input_ids.to(model.device)
        width = ids.shape[1]
        if attention_mask is None:
            lengths = torch.full((ids.shape[0],), width, dtype=torch.long)
        else:
            mask = attention_mask.to(torch.bool).cpu()
            lengths = mask.sum(1)
            if mask.shape != ids.shape or not torch.equal(mask, torch.arange(width) >= (width - lengths)[:, None]):
                raise ValueError("greedy_generate: attention_mask must be left padding (0 ... 0 1 ... 1 per row) of "
                                 "input_ids' shape")
    else:
        if attention_mask is not None:
            raise ValueError("greedy_generate: attention_mask goes with a padded input_ids tensor, not a list of prompts")
        rows = [torch.as_tensor(row, dtype=torch.long).flatten() for row in input_ids]
        if not rows:
            raise ValueError("greedy_generate: no prompts")
        lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
        width = int(lengths.max())
        pad = getattr(model.config, "pad_token_id", None)
        ids = torch.full((len(rows), width), pad if isinstance(pad, int) and pad >= 0 else 0, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = row
        ids = ids.to(model.device)
    if int(lengths.min()) < 1:
        raise ValueError("greedy_generate: every prompt needs at least one token")
    return ids[:, width - int(lengths.max()):], lengths.to(model.device)


def _runs(lengths: list[int]) -> list[tuple[int, int, int]]:
    """(first row, end row, length) of each run of consecutive rows of equal length."""
    runs = []
    for i, n in enumerate(lengths):
        if runs and runs[-1][2] == n:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, n])
    return [tuple(r) for r in runs]


class _Drafter:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the sequence's last 3 (else 2,
    else 1) tokens, copied on through the draft itself when that occurrence runs into the end (a repeating
    pattern goes on repeating). Only the latest ``scan`` earlier occurrences of the last token are tried."""

    def __init__(self, tokens: list[int], n: int = 3, scan: int = 64):
        self.seq: list[int] = []
        self.at: dict[int, list[int]] = {}  # token -> its positions, ascending
        self.n, self.scan = n, scan
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        seq, at = self.seq, self.at
        for t in tokens:
            at.setdefault(t, []).append(len(seq))
            seq.append(t)

    def draft(self, k: int) -> list[int]:
        seq, end = self.seq, len(self.seq)
        if k <= 0 or end < 2:
            return []
        best, src = 0, None
        places = self.at[seq[-1]]
        for i in places[-2:-2 - self.scan:-1]:  # earlier occurrences of the last token, latest first
            size = 1
            while size < self.n and size <= i and seq[i - size] == seq[end - 1 - size]:
                size += 1
            if size > best:
                best, src = size, i + 1
                if size == self.n:
                    break
        if src is None:
            return []
        out: list[int] = []
        for j in range(src, src + k):
            out.append(seq[j] if j < end else out[j - end])
        return out


def _prefill(model, ids, row_lengths, padded, cache, cache_arg) -> torch.Tensor:
    """Next-token logits (batch, vocab) of the prompts, each run of consecutive equal-length rows in one
    unpadded forward (as those rows alone), written right-aligned into the (slotted, when padded) cache."""
    batch, width = ids.shape
    parts = []
    for r0, r1, n in _runs(row_lengths) if padded else [(0, batch, width)]:
        if padded:
            for layer in cache.layers:
                layer.window(slice(r0, r1), width - n, 0)
        parts.append(scoring.prefill_logits(model, ids[r0:r1, width - n:], cache, cache_arg))
    if padded:
        for layer in cache.layers:
            layer.window(slice(None), 0, width)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@torch.inference_mode()
def greedy_generate(model, input_ids: torch.Tensor | Sequence[Sequence[int]], max_new_tokens: int,
                    eos_token_id: int | Sequence[int] | None = None, output_scores: bool = False,
                    stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    attention_mask: torch.Tensor | None = None, draft_tokens: int = 0):
    """Greedy decoding with a KV cache that is rebuilt once, when the sequence first exceeds L0.

    ``input_ids``: (batch, prompt_len) prompts, left-padded when ``attention_mask`` (1 for tokens, 0 for
    padding) is given, or a list of prompts of any lengths (token lists or 1-D tensors), padded here. Every
    row's positions start at 0, and each row decodes as it would alone: rows of different lengths must share
    a :func:`batch_class` (a ValueError otherwise). Returns the padded prompts + new tokens, like
    ``model.generate`` (the new tokens of every row start at the same column); with ``output_scores`` also
    the list of per-token next-token logits (batch, vocab). ``eos_token_id`` may be one id or several (e.g.
    Llama 3's end-of-turn ids). A row that has produced an eos id, or for which ``stop(new_tokens)`` (called
    after every step with the (batch, n_new) tokens generated so far) returns True, is finished: it produces
    the first eos id from then on (any token when there is none; callers cut at their stop condition), and
    decoding ends early once every row is finished. Finishing changes no token a row produced before it.

    Each run of consecutive equal-length rows is prefilled unpadded (as it would be alone); the decoding
    steps attend through a padding mask, and padding slots are never computed (their cache slots hold zeros).

    ``draft_tokens`` > 0: prompt-lookup drafting. Each step feeds every row its last token plus up to that
    many guessed next tokens (what followed the latest earlier occurrence of its last few tokens, prompt
    included; fewer while a row's guesses keep failing) and keeps the guesses that equal the greedy tokens
    computed at their positions, plus one more greedy token: the same tokens as one token per step, in fewer
    forwards when the text repeats (answers copied from the context, a degenerate loop) in every row of the
    batch (the slowest row sets the number of forwards). Rows then advance at different rates: rejected
    guesses leave masked slots in the cache (at most 2 * ``max_new_tokens`` + 4 * ``draft_tokens``, then one
    token per step), and ``stop`` sees rows behind the longest filled with the first eos id. Rows that cross
    L0 mid-generation decode one token per step (the cache rebuild at L0 needs the batch in step); so does a
    model whose cache cannot be padded, and a ``stop`` without an ``eos_token_id``.
    """
    l0 = switch_length(model)
    # transformers >= 5.x names the argument ``cache``; earlier 5.x releases ``past_key_values``
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids, lengths = _as_batch(model, input_ids, attention_mask)
    batch, width = ids.shape
    row_lengths = lengths.tolist()
    classes = {batch_class(l0, n, max_new_tokens) for n in row_lengths}
    if len(classes) > 1:
        raise ValueError(f"greedy_generate: prompt lengths {sorted(set(row_lengths))} with {max_new_tokens} new tokens "
                         f"fall on different sides of L0 = {l0} (batch_class: {sorted(map(str, classes))}); "
                         f"batch them separately")
    padded = min(row_lengths) != width
    crossing = isinstance(next(iter(classes)), tuple)
    draft = max(0, int(draft_tokens)) if not crossing and max_new_tokens > 1 else 0
    # drafting: every step appends 1 + (longest draft) slots, the rejected ones masked: at most
    # 2 * max_new_tokens + 4 * draft_tokens such holes (past that, one token per step)
    capacity = width + max_new_tokens + (2 * max_new_tokens + 4 * draft if draft else 0)
    cache, slotted = _new_cache(model, batch, capacity)
    if padded and not slotted:
        raise ValueError("greedy_generate: this model's cache has sliding-window or recurrent layers; "
                         "batch prompts of one length only")
    draft = draft if slotted and (stop is None or eos_token_id is not None) else 0  # stop needs eos filler
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    eos = torch.tensor(eos_ids, dtype=torch.long, device=ids.device) if eos_ids else None
    if max_new_tokens <= 0:
        return (ids, []) if output_scores else ids
    args = (model, ids, lengths, max_new_tokens, eos, output_scores, stop, cache, cache_arg)
    if draft:
        new, scores = _decode_drafted(*args, draft=draft, capacity=capacity, padded=padded)
    else:
        new, scores = _decode(*args, l0=l0, padded=padded)
    out = torch.cat([ids, new], dim=1)
    return (out, scores) if output_scores else out


def _sdpa_masks(model, length: int) -> bool:
    """Whether to hand the model the 4D boolean masks transformers would build for sdpa (no sliding window
    that could bind): transformers otherwise rebuilds them from the 2D padding mask at every step."""
    window = getattr(model.config, "sliding_window", None)
    return getattr(model.config, "_attn_implementation", None) == "sdpa" and (not window or window >= length)


def _decode(model, ids, lengths, max_new_tokens, eos, output_scores, stop, cache, cache_arg, *, l0, padded):
    """One token per row and step, all rows in step: (new tokens (batch, steps), per-step logits)."""
    batch, width = ids.shape
    done = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    new = torch.empty(batch, max_new_tokens, dtype=torch.long, device=ids.device)
    # padding mask over every slot the decoding will fill (1: a token of the row)
    mask = (torch.arange(width + max_new_tokens, device=ids.device) >= (width - lengths)[:, None]) if padded else None
    if padded:
        mask = mask[:, None, None, :] if _sdpa_masks(model, mask.shape[1]) else mask.long()
    scores, steps = [], 0
    for step in range(max_new_tokens):
        seq = width + step  # slots filled once this step's forward is done
        if step == 0:
            logits = _prefill(model, ids, lengths.tolist(), padded, cache, cache_arg)
        elif l0 is not None and seq - 1 <= l0 < seq:
            # first forward past L0 (a batch of one length): the cached keys were rotated with the short factors
            cache, _ = _new_cache(model, batch, width + max_new_tokens)
            logits = model(input_ids=torch.cat([ids, new[:, :step]], dim=1), use_cache=True, logits_to_keep=1,
                           **{cache_arg: cache}).logits[:, -1]
        else:
            extra = {"attention_mask": mask[..., :seq], "position_ids": (lengths + (step - 1))[:, None]} if padded else {}
            logits = model(input_ids=new[:, step - 1:step], use_cache=True, logits_to_keep=1,
                           **{cache_arg: cache}, **extra).logits[:, -1]
        token = logits.argmax(-1)
        if eos is not None:
            token = torch.where(done, eos[0], token)
            done |= torch.isin(token, eos)
        new[:, step] = token
        steps = step + 1
        if output_scores:
            scores.append(logits)
        if stop is not None:
            done |= stop(new[:, :steps]).to(done.device)
        if done.all():
            break
    return new[:, :steps], scores


def _decode_drafted(model, ids, lengths, max_new_tokens, eos, output_scores, stop, cache, cache_arg, *,
                    draft, capacity, padded):
    """Prompt-lookup drafting (see greedy_generate): (new tokens (batch, longest row), per-token logits)."""
    batch, width = ids.shape
    dev = ids.device
    fill = int(eos[0]) if eos is not None else 0
    new = torch.full((batch, max_new_tokens), fill, dtype=torch.long, device=dev)
    count = torch.zeros(batch, dtype=torch.long, device=dev)  # new tokens of each row so far
    done = torch.zeros(batch, dtype=torch.bool, device=dev)
    # which cache slots hold a token of the row: its prompt (right-aligned), then the accepted inputs
    valid = torch.zeros(batch, capacity, dtype=torch.bool, device=dev)
    valid[:, :width] = torch.arange(width, device=dev) >= (width - lengths)[:, None]
    sdpa = _sdpa_masks(model, capacity)
    slots = torch.arange(capacity, device=dev)
    cols = torch.arange(1 + draft, device=dev)
    row_lengths = lengths.tolist()
    drafters = [_Drafter(ids[r, width - n:].tolist()) for r, n in enumerate(row_lengths)]
    limit = [draft] * batch  # each row's guess length: halved towards what it got accepted, doubled when all were
    logits = _prefill(model, ids, row_lengths, padded, cache, cache_arg)[:, None]  # (batch, 1, vocab)
    logits_out = logits.new_zeros((batch, max_new_tokens, logits.shape[-1])) if output_scores else None
    inp = None  # the prefill's "chunk" is the prompt itself
    k = torch.zeros(batch, dtype=torch.long, device=dev)  # drafts per row in the chunk
    start = width  # first slot of the next chunk
    while True:
        chunk = logits.shape[1]
        greedy = logits.argmax(-1)  # (batch, chunk)
        if inp is None:
            accepted = torch.zeros(batch, dtype=torch.long, device=dev)
        else:  # leading drafts equal to the greedy token before them
            match = (inp[:, 1:] == greedy[:, :-1]) & (cols[:chunk - 1] < k[:, None])
            accepted = match.long().cumprod(1).sum(1)
            valid[:, start:start + chunk] = cols[:chunk] <= accepted[:, None]
            start += chunk
        take = torch.where(done, 0, accepted + 1)  # new tokens per row: the accepted drafts' greedy tokens + 1
        if eos is not None:  # a row ends at its first eos
            is_eos = torch.isin(greedy, eos) & (cols[:chunk] < take[:, None])
            first = is_eos.long().argmax(1)
            ended = is_eos.any(1)
            take = torch.where(ended, first + 1, take)
            done |= ended
        rows, js = (cols[:chunk] < take[:, None]).nonzero(as_tuple=True)
        at = count[rows] + js
        new[rows, at] = greedy[rows, js]
        if output_scores:
            logits_out[rows, at] = logits[rows, js]
        taken = take.tolist()
        greedy_rows = greedy.tolist()
        if inp is not None:
            for r, (guessed, got) in enumerate(zip(k.tolist(), accepted.tolist())):
                if guessed:
                    limit[r] = min(draft, 2 * limit[r]) if got == guessed else max(1, got, limit[r] // 2)
        count += take
        done |= count >= max_new_tokens
        if stop is not None:
            done |= stop(new[:, :int(count.max())]).to(dev)
        if bool(done.all()):
            break
        counts, finished = count.tolist(), done.tolist()
        # the slots left must hold the longest remaining row at one token per step: drafts only beyond that
        spare = capacity - start - max(max_new_tokens - c for c, f in zip(counts, finished) if not f)
        drafts = []
        for r in range(batch):
            if finished[r]:
                drafts.append([])
                continue
            drafters[r].extend(greedy_rows[r][:taken[r]])
            drafts.append(drafters[r].draft(min(limit[r], max_new_tokens - counts[r] - 1, spare)))
        chunk = 1 + max(map(len, drafts))
        last = new[torch.arange(batch, device=dev), (count - 1).clamp(min=0)].tolist()
        inp = torch.tensor([[last[r], *d] + [last[r]] * (chunk - 1 - len(d)) for r, d in enumerate(drafts)],
                           dtype=torch.long, device=dev)
        k = torch.tensor([len(d) for d in drafts], dtype=torch.long, device=dev)
        # positions continue each row's own; filler columns repeat its last real one. A finished row's input
        # (output unused) stays at most where the row's last forward would be: a "short" batch stays within L0
        last_pos = torch.minimum(lengths + count - 1, lengths + (max_new_tokens - 2))
        pos = last_pos[:, None] + torch.minimum(cols[:chunk][None], k[:, None])
        valid[:, start:start + chunk] = cols[:chunk] <= k[:, None]
        end = start + chunk
        if sdpa:
            causal = slots[:end][None] <= (start + cols[:chunk])[:, None]  # (chunk, end)
            mask = valid[:, None, None, :end] & causal
        else:
            mask = valid[:, :end].long()
        logits = model(input_ids=inp, position_ids=pos, attention_mask=mask, use_cache=True, logits_to_keep=chunk,
                       **{cache_arg: cache}).logits
    steps = int(count.max())
    scores = [logits_out[:, t] for t in range(steps)] if output_scores else []
    return new[:, :steps], scores
