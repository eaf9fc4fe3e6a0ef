"""Needle-PPL, plain PPL and answer accuracy of a loaded model, computing logits only where labels are.

The decoder runs once per batch; the LM head is applied only to the hidden states of labelled positions
(in chunks), so a 32k-token needle sample never materializes a 32k x vocab logit matrix. Where few
positions are labelled (a needle's answer), the last decoder layer computes its queries and MLP only
there: nothing after it reads the other positions, so a 4-layer model does a quarter less work. Accuracy is
teacher-forced exact match of every answer token, which equals greedy decoding of the answer (the
greedy continuation matches the answer iff the argmax is right at every answer position).
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import rope

IGNORE_INDEX = -100


@dataclass
class Scores:
    nll_sum: torch.Tensor  # per sample: summed NLL over labelled tokens
    n_tokens: torch.Tensor  # per sample: labelled tokens
    all_correct: torch.Tensor  # per sample: every labelled token is the argmax

    @property
    def nll(self) -> torch.Tensor:
        return self.nll_sum / self.n_tokens.clamp(min=1)


def _decoder_and_head(model):
    return model.base_model, model.get_output_embeddings()


#: decoder layers laid out as Llama's (q/k/v/o projections, pre-norms, one MLP): the ones whose last layer
#: :func:`_hidden_at` runs for a subset of query positions; any other model runs whole
SUBSET_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")


def _subset_ok(decoder, length: int) -> bool:
    last = decoder.layers[-1]
    window = getattr(decoder.config, "sliding_window", None)
    if getattr(decoder.config, "model_type", "") == "qwen2" and not getattr(decoder.config, "use_sliding_window", False):
        window = None
    return (type(last).__name__ in SUBSET_LAYERS and hasattr(decoder, "rotary_emb") and hasattr(decoder, "norm")
            and not getattr(decoder, "gradient_checkpointing", False) and (not window or window >= length))


def _hidden_at(decoder, input_ids: torch.Tensor, positions: torch.Tensor, cache=None, cache_arg: str = "cache") -> torch.Tensor:
    """Final (normed) hidden states at ``positions`` [B, P, H]: every layer but the last runs on the whole
    sequence; the last one projects keys and values everywhere but queries, attention output and MLP only
    at ``positions`` -- the same numbers as the full forward, up to float summation order. With ``cache``
    (empty: a prefill) every layer's keys and values are written to it, as a cached forward writes them."""
    layers, last = decoder.layers, decoder.layers[-1]
    captured = {}
    hook = decoder.norm.register_forward_pre_hook(lambda mod, args: captured.__setitem__("h", args[0]))
    decoder.layers = layers[:-1]
    try:
        decoder(input_ids=input_ids, use_cache=cache is not None, **({cache_arg: cache} if cache is not None else {}))
    finally:
        decoder.layers = layers
        hook.remove()
    h = captured["h"]  # [B, L, H], after layer n-2, before the final norm
    attn, (b, length) = last.self_attn, input_ids.shape
    apply_rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    x = last.input_layernorm(h)
    cos, sin = decoder.rotary_emb(x, torch.arange(length, device=x.device)[None])
    q = attn.q_proj(x[:, positions]).view(b, len(positions), -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, length, -1, attn.head_dim).transpose(1, 2)
    # the model's own rotation, once per tensor: the other argument is an empty slice (no heads, no work)
    q, _ = apply_rotary(q, q[:, :0], cos[:, positions], sin[:, positions])
    _, k = apply_rotary(k[:, :0], k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, attn.layer_idx)
    causal = positions[:, None] >= torch.arange(length, device=x.device)[None]  # [P, L]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=attn.scaling,
                                         enable_gqa=q.shape[1] != k.shape[1])
    hp = h[:, positions] + attn.o_proj(out.transpose(1, 2).reshape(b, len(positions), -1))
    hp = hp + last.mlp(last.post_attention_layernorm(hp))
    return decoder.norm(hp)


def prefill_logits(model, input_ids: torch.Tensor, cache, cache_arg: str = "cache") -> torch.Tensor:
    """Next-token logits [B, vocab] after ``input_ids``, filling the empty ``cache`` (generation's prefill):
    the last layer computes its query and MLP at the last position only."""
    decoder, head = _decoder_and_head(model)
    length = input_ids.shape[1]
    if not _subset_ok(decoder, length) or cache.get_seq_length() != 0:
        return model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{cache_arg: cache}).logits[:, -1]
    last = torch.tensor([length - 1], device=input_ids.device)
    return head(_hidden_at(decoder, input_ids, last, cache, cache_arg)[:, -1])


@torch.no_grad()
def score(model, input_ids: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 4096) -> Scores:
    """Per-sample summed NLL, labelled-token count and exact-match of ``labels`` (shifted like HF)."""
    decoder, head = _decoder_and_head(model)
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    positions = mask.any(0).nonzero()[:, 0]  # hidden positions some row needs
    # few of them (a needle's answer): the last layer only there; many (plain PPL): the whole decoder
    if 0 < len(positions) * 4 <= mask.shape[1] and _subset_ok(decoder, input_ids.shape[1]):
        rows = _hidden_at(decoder, input_ids, positions)[mask[:, positions]]
    else:
        hidden = decoder(input_ids=input_ids).last_hidden_state  # [B, L, H]
        rows = hidden[:, :-1][mask]  # [N, H], only labelled positions
    tgt = target[mask]
    batch_idx = mask.nonzero()[:, 0]
    nll = torch.empty(len(tgt), dtype=torch.float32, device=rows.device)
    hit = torch.empty(len(tgt), dtype=torch.bool, device=rows.device)
    for i in range(0, len(tgt), chunk_rows):
        logits = head(rows[i : i + chunk_rows]).float()
        nll[i : i + chunk_rows] = F.cross_entropy(logits, tgt[i : i + chunk_rows], reduction="none")
        hit[i : i + chunk_rows] = logits.argmax(-1) == tgt[i : i + chunk_rows]
    b = input_ids.shape[0]
    nll_sum = torch.zeros(b, device=rows.device).index_add_(0, batch_idx, nll)
    n_tok = torch.zeros(b, dtype=torch.long, device=rows.device).index_add_(0, batch_idx, torch.ones_like(batch_idx))
    wrong = torch.zeros(b, dtype=torch.long, device=rows.device).index_add_(0, batch_idx, (~hit).long())
    return Scores(nll_sum.cpu(), n_tok.cpu(), (wrong == 0).cpu() & (n_tok > 0).cpu())


@torch.no_grad()
def score_naive(model, input_ids: torch.Tensor, labels: torch.Tensor) -> Scores:
    """Reference: full-vocabulary logits over the whole sequence (what the fast path must equal)."""
    logits = model(input_ids=input_ids).logits.float()[:, :-1]
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    nll = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none") * mask
    correct = (logits.argmax(-1) == target) | ~mask
    return Scores(nll.sum(1).cpu(), mask.sum(1).cpu(), correct.all(1).cpu() & (mask.sum(1) > 0).cpu())


def needle_accuracy(model, samples: Sequence, batch_tokens: int) -> tuple[float, float]:
    """(accuracy, mean answer NLL) over needle samples of one length (:class:`~longrope2.needles.NeedleSample`)."""
    device = next(model.parameters()).device
    bs = max(1, batch_tokens // len(samples[0].input_ids))
    hits, nll = [], []
    for start in range(0, len(samples), bs):
        batch = samples[start : start + bs]
        ids = torch.from_numpy(np.stack([s.input_ids for s in batch])).to(device)
        lab = torch.from_numpy(np.stack([s.labels for s in batch])).to(device)
        sc = score(model, ids, lab)
        hits += sc.all_correct.tolist()
        nll += sc.nll.tolist()
    return float(np.mean(hits)), float(np.mean(nll))


def needle_choice(model, samples: Sequence, batch_tokens: int) -> np.ndarray:
    """For each multi-needle sample, the text position (0: first in the haystack) of the needle whose value
    the model finds most likely as the answer (lowest mean teacher-forced NLL over the answer tokens, every
    needle's value tried in place of the asked one). Tells a model that matches the key (the asked position
    chosen) from one that copies *a* needle's value (choices spread over the needles)."""
    device = next(model.parameters()).device
    rows = [(i, p, np.concatenate([s.prompt, np.asarray(a, dtype=np.int64)]), len(a))
            for i, s in enumerate(samples) for p, a in enumerate(s.answers)]
    nll = np.full((len(samples), max(len(s.answers) for s in samples)), np.inf)
    for width in sorted({len(r[2]) for r in rows}):  # answers of other token counts batch apart
        same = [r for r in rows if len(r[2]) == width]
        bs = max(1, batch_tokens // width)
        for start in range(0, len(same), bs):
            part = same[start : start + bs]
            ids = torch.from_numpy(np.stack([r[2] for r in part])).to(device)
            lab = torch.full_like(ids, IGNORE_INDEX)
            for j, r in enumerate(part):
                lab[j, width - r[3] :] = ids[j, width - r[3] :]
            for r, v in zip(part, score(model, ids, lab).nll.tolist()):
                nll[r[0], r[1]] = v
    return nll.argmin(1)


class Evaluator:
    """Mean NLL of the labelled tokens of a fixed sample set under any RopeScaling (weights loaded once)."""

    def __init__(self, model, input_ids: np.ndarray, labels: np.ndarray, batch_tokens: int = 8192):
        self.model = model
        self.device = next(model.parameters()).device
        self.ids = torch.as_tensor(input_ids, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.batch = max(1, batch_tokens // self.ids.shape[1])
        self.sample_forwards = 0

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __call__(self, scaling: rope.RopeScaling, n: int | None = None) -> tuple[float, float]:
        """(mean NLL over labelled tokens, exact-match accuracy) on the first ``n`` samples."""
        rope.apply_scaling(self.model, scaling)
        return self.score_installed(n)

    def per_sample(self, scaling: rope.RopeScaling | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean NLL of each sample's labelled tokens, each sample's exact match) on the whole set, under
        ``scaling`` or the installed RoPE; for intervals, not counted as search work."""
        if scaling is not None:
            rope.apply_scaling(self.model, scaling)
        nll, hit = [], []
        for i in range(0, len(self), self.batch):
            sc = score(self.model, self.ids[i : i + self.batch].to(self.device), self.labels[i : i + self.batch].to(self.device))
            nll += sc.nll.tolist()
            hit += sc.all_correct.tolist()
        return np.asarray(nll), np.asarray(hit, dtype=bool)

    def score_installed(self, n: int | None = None) -> tuple[float, float]:
        """The same, under whatever RoPE the model has now (e.g. a fine-tuned export's own config)."""
        n = len(self) if n is None else min(n, len(self))
        nll_sum, n_tok, hits = self._sums(0, n)
        return nll_sum / max(n_tok, 1), hits / n

    def partial(self, scaling: rope.RopeScaling, start: int, stop: int) -> tuple[float, int, int]:
        """(summed NLL, labelled tokens, exact matches) of samples ``start:stop``: racing adds samples to
        a candidate's running sums instead of re-scoring the ones it has already seen."""
        rope.apply_scaling(self.model, scaling)
        return self._sums(start, min(stop, len(self)))

    def map(self, jobs: Sequence[tuple[rope.RopeScaling, int, int]]) -> list[tuple[float, int, int]]:
        """:meth:`partial` of each ``(scaling, start, stop)`` job, in order (what :class:`EvaluatorPool`
        spreads over devices)."""
        return [self.partial(*job) for job in jobs]

    def _sums(self, start: int, stop: int) -> tuple[float, int, int]:
        nll_sum, n_tok, hits = 0.0, 0, 0
        for i in range(start, stop, self.batch):
            j = min(i + self.batch, stop)
            sc = score(self.model, self.ids[i:j].to(self.device), self.labels[i:j].to(self.device))
            nll_sum += float(sc.nll_sum.sum())
            n_tok += int(sc.n_tokens.sum())
            hits += int(sc.all_correct.sum())
        self.sample_forwards += max(stop - start, 0)
        return nll_sum, n_tok, hits


class EvaluatorPool:
    """One :class:`Evaluator` per device, each holding its own copy of the model: :meth:`map` hands the jobs
    of a batch (``(scaling, start, stop)``, e.g. every candidate of a racing rung) to one thread per device,
    each taking the next job from a shared counter, and returns the results in job order.

    A job's result is computed by one evaluator alone, on the same samples in the same batches, so which
    device scored it, and how many devices there are, never changes what the caller sees (on identical
    devices: the same kernels give the same numbers). The caller stays single-threaded and deterministic.
    With one evaluator the jobs run in the calling thread, in order."""

    def __init__(self, evaluators: Sequence[Evaluator]):
        if not evaluators:
            raise ValueError("an EvaluatorPool needs at least one evaluator")
        sizes = {len(e) for e in evaluators}
        if len(sizes) != 1:
            raise ValueError(f"evaluators score different sample sets (sizes {sorted(sizes)})")
        self.evaluators = list(evaluators)
        self.sample_forwards = 0

    def __len__(self) -> int:
        return len(self.evaluators[0])

    @property
    def first(self) -> Evaluator:
        """The evaluator of the first device (for one-off scoring outside the search)."""
        return self.evaluators[0]

    def per_sample(self, scaling: rope.RopeScaling | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.first.per_sample(scaling)

    def map(self, jobs: Sequence[tuple[rope.RopeScaling, int, int]]) -> list[tuple[float, int, int]]:
        jobs = list(jobs)
        if len(self.evaluators) == 1 or len(jobs) <= 1:
            out = self.first.map(jobs)
        else:
            out: list = [None] * len(jobs)
            nxt, lock = iter(range(len(jobs))), threading.Lock()

            def work(ev: Evaluator) -> None:
                while True:
                    with lock:
                        i = next(nxt, None)
                    if i is None:
                        return
                    out[i] = ev.partial(*jobs[i])

            with ThreadPoolExecutor(len(self.evaluators), thread_name_prefix="evaluator") as ex:
                for f in [ex.submit(work, ev) for ev in self.evaluators]:
                    f.result()  # re-raises a worker's exception
        self.sample_forwards += sum(max(min(stop, len(self)) - start, 0) for _, start, stop in jobs)
        return out
