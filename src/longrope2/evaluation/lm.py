"""The one lm-eval model every evaluation goes through: exact past L0, never truncating.

lm-eval's HFLM decodes with stock ``generate``, whose KV cache keeps short-factor keys in a Llama-family
LongRoPE model once the sequence crosses L0 (see :mod:`longrope2.generation`), and it left-truncates
prompts that do not fit ``max_length``. :class:`LongContextLM` decodes with
:func:`~longrope2.generation.greedy_generate` and refuses, in one line, anything that does not fit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from .. import progress
from ..errors import LongRoPE2Error
from ..generation import batch_class, greedy_generate, padding_supported, switch_length

# generation kwargs that only matter when sampling: harmless with greedy decoding
SAMPLING_ONLY = frozenset({"do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p"})
# lm-eval's aliases for the number of new tokens, in its priority order (models.utils.normalize_gen_kwargs)
MAX_NEW_KEYS = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")
# head-side logit transforms that rule out running the output embedding by hand on slices
HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


@dataclass
class _Job:
    index: int
    ids: list[int]
    max_new: int
    until: list[str]


def _where(req, index: int) -> str:
    """Which request, for error messages: lm-eval's task name (RULER: task and length) and doc id."""
    name = getattr(req, "task_name", None)
    return f"{name}, doc {req.doc_id}" if name else f"request {index}"


class LongContextLM(TemplateLM):
    """lm-eval ``LM`` over a loaded HF causal LM and its tokenizer (CPU fp32 or GPU bf16: the model's device).

    ``max_length`` is required: prompt + new tokens (or context + continuation) beyond it is an error, never a
    truncation. ``generate_until`` decodes the prompts longest first in left-padded batches of prompts that
    share a :func:`~longrope2.generation.batch_class` (with a longrope factor switch: all within L0 to the end,
    or all past it from the prefill on; a prompt that crosses L0 mid-generation only with prompts of its own
    length), each row at its own positions, as exact as decoding it alone. ``draft_tokens`` (default 16; 0: off)
    is greedy_generate's prompt-lookup drafting: up to that many guessed tokens (what followed the last few
    tokens earlier in the prompt or output) are checked per forward, so text that repeats or copies from the
    context takes fewer forwards; the tokens are the greedy ones either way.
    A text is one BOS plus its tokens, as the RULER generator counts prompts (for Llama tokenizers the same
    as HFLM); loglikelihood requests are split into context/continuation tokens as lm-eval's TemplateLM does.
    """

    def __init__(self, model, tokenizer, *, max_length: int, batch_size: int = 1, max_gen_toks: int = 256,
                 logits_budget: int = 2**28, truncate: str | None = None, draft_tokens: int = 16):
        super().__init__()
        for key, value in (("max_length", max_length), ("batch_size", batch_size), ("max_gen_toks", max_gen_toks),
                           ("logits_budget", logits_budget)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise LongRoPE2Error(f"LongContextLM {key}: must be a positive integer, got {value!r}")
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 0:
            raise LongRoPE2Error(f"LongContextLM draft_tokens: must be a non-negative integer, got {draft_tokens!r}")
        # > 0: greedy_generate's prompt-lookup drafting (the same tokens, in fewer forwards when text repeats)
        self.draft_tokens = draft_tokens
        if truncate not in (None, "middle"):
            raise LongRoPE2Error(f"LongContextLM truncate: must be None or 'middle', got {truncate!r}")
        # "middle": a generation prompt that does not fit keeps its first and last halves (LongBench's
        # pred.py protocol); None: it is an error (RULER data is sized to fit)
        self.truncate = truncate
        self.truncated = 0  # prompts cut in the middle so far
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks
        self.logits_budget = logits_budget  # most logits held at once when scoring (elements)
        self._device = model.device
        self.vocab_size = int(getattr(model.config, "vocab_size", 0) or 1)
        # tokenizer eos first (the filler once a row finishes), then the generation config's (Llama 3 lists several)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        self.eos_ids = list(dict.fromkeys(i for i in [tokenizer.eos_token_id, *gen_eos] if i is not None))
        # HFLM also stops at the eos text, should the model spell it out with ordinary tokens
        self.eos_text = tokenizer.decode([tokenizer.eos_token_id]) if tokenizer.eos_token_id is not None else None

    # ------------------------------------------------------------------ lm-eval plumbing

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Conditioning token for an empty context (as HFLM: BOS, else EOS)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "")).replace("/", "__")

    def get_model_info(self) -> dict:
        """Merged by ``simple_evaluate`` into its ``config`` block."""
        return {"model_name": str(getattr(self.model.config, "_name_or_path", "")), "dtype": str(self.model.dtype),
                "max_length": self.max_length, "batch_size": self.batch_size, "draft_tokens": self.draft_tokens,
                "rope_switch_length": switch_length(self.model)}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The text's tokens, after exactly one BOS (when the tokenizer has one) unless ``add_special_tokens``
        is False: the RULER generator's ``prompt_ids`` convention. Tokenizer defaults would add no BOS for
        GPT-2-style tokenizers (the data was sized with one) and a trailing EOS for some."""
        ids = self.tokenizer.encode(string, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        if add_special_tokens is False or bos is None or (ids and ids[0] == bos):
            return ids
        return [bos, *ids]

    def _text(self, tokens: list[int]) -> str:
        """A continuation as text: up to its first eos id, special tokens dropped (as HFLM decodes)."""
        for i, t in enumerate(tokens):
            if t in self.eos_ids:
                tokens = tokens[:i]
                break
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for term in until:
            if term:
                text = text.split(term)[0]
        return text

    def _check_fit(self, req, index: int, n: int, what: str) -> None:
        if n > self.max_length:
            raise LongRoPE2Error(f"{_where(req, index)}: {what} = {n} tokens exceeds max_length {self.max_length} "
                                 f"(LongContextLM truncates only generation prompts, and only with truncate='middle')")

    # ------------------------------------------------------------------ generation

    def _job(self, index: int, req) -> _Job:
        context, gen_kwargs = req.args[0], dict(req.args[1] or {})
        until = gen_kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_new = next((int(gen_kwargs.pop(k)) for k in MAX_NEW_KEYS if gen_kwargs.get(k) is not None), self.max_gen_toks)
        for k in MAX_NEW_KEYS:
            gen_kwargs.pop(k, None)
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0.0) > 0.0:
            raise LongRoPE2Error(f"{_where(req, index)}: LongContextLM decodes greedily, got do_sample="
                                 f"{gen_kwargs.get('do_sample')!r} temperature={gen_kwargs.get('temperature')!r}")
        unknown = sorted(set(gen_kwargs) - SAMPLING_ONLY)
        if unknown or len(req.args) > 2:
            raise LongRoPE2Error(f"{_where(req, index)}: unsupported generation arguments {unknown or req.args[2:]}; "
                                 f"LongContextLM takes until and max_gen_toks")
        if self.eos_text and self.eos_text not in until:
            until.append(self.eos_text)
        ids = self.tok_encode(context)
        if not ids:
            raise LongRoPE2Error(f"{_where(req, index)}: empty prompt (no tokens to condition on)")
        counted = (getattr(req, "doc", None) or {}).get("prompt_tokens")
        if isinstance(counted, int) and counted != len(ids):
            raise LongRoPE2Error(f"{_where(req, index)}: the data counts {counted} prompt tokens, this tokenizer gives "
                                 f"{len(ids)} (RULER data is per tokenizer: regenerate it for this model)")
        keep = self.max_length - max_new
        if self.truncate == "middle" and len(ids) > keep > 1:
            head = keep // 2
            ids = ids[:head] + ids[len(ids) - (keep - head):]
            self.truncated += 1
        self._check_fit(req, index, len(ids) + max_new, f"prompt {len(ids)} + max_gen_toks {max_new}")
        return _Job(index, ids, max_new, until)

    def _stopper(self, untils: list[list[str]]):
        """``stop`` for greedy_generate: rows whose text (up to eos) contains one of their stop strings.

        Finishing a row early only saves steps (the text is cut at its stop string anyway), so each step
        decodes just the last few tokens of each row, and only a hit there is confirmed on the whole text: a
        stop string the tail misses (split across more tokens than the tail holds) costs steps, never text."""
        found = [False] * len(untils)
        tail = 8 + max((len(t) for until in untils for t in until), default=0)
        eos = set(self.eos_ids)

        def stop(new: torch.Tensor) -> torch.Tensor:
            for r, row in enumerate(new.tolist()):
                if not found[r] and any(untils[r]):
                    # the row's own last tokens: up to its first eos (rows behind others are filled with eos)
                    end = next((i for i, t in enumerate(row) if t in eos), len(row))
                    text = self.tokenizer.decode(row[max(0, end - tail):end], skip_special_tokens=True)
                    if any(t and t in text for t in untils[r]):
                        text = self._text(row)
                        found[r] = any(t and t in text for t in untils[r])
            return torch.tensor(found)

        return stop

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, untils: list[list[str]]) -> list[list[int]]:
        """New tokens for a batch of prompts of one batch_class (the override point for scripted test models)."""
        out = greedy_generate(self.model, prompts, max_new_tokens, eos_token_id=self.eos_ids,
                              stop=self._stopper(untils) if any(untils) else None, draft_tokens=self.draft_tokens)
        return out[:, max(map(len, prompts)):].tolist()

    def _batches(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Longest prompts first (as HFLM: running out of memory shows at once), in batches of up to
        ``batch_size`` jobs with the same max_new and batch_class (one prompt length where the model's
        cache cannot be padded)."""
        l0, pad = switch_length(self.model), padding_supported(self.model)
        groups: dict[tuple, list[_Job]] = defaultdict(list)
        for job in sorted(jobs, key=lambda j: (-len(j.ids), -j.max_new, j.index)):
            kind = batch_class(l0, len(job.ids), job.max_new) if pad else len(job.ids)
            groups[(job.max_new, kind)].append(job)
        batches = [group[s:s + self.batch_size] for group in groups.values()
                   for s in range(0, len(group), self.batch_size)]
        return sorted(batches, key=lambda b: (-len(b[0].ids), -b[0].max_new))  # stable: groups keep their order

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations in request order; every prompt is checked against ``max_length`` first."""
        jobs = [self._job(i, req) for i, req in enumerate(requests)]
        out: list[str | None] = [None] * len(jobs)
        with progress.bar(total=len(jobs), enabled=not disable_tqdm, desc="generate_until") as pbar:
            for batch in self._batches(jobs):
                new = self._generate([j.ids for j in batch], batch[0].max_new, [j.until for j in batch])
                for job, tokens in zip(batch, new, strict=True):
                    out[job.index] = self._cut(self._text(tokens), job.until)
                    self.cache_hook.add_partial("generate_until", requests[job.index].args, out[job.index])
                pbar.update(len(batch))
        return out

    # ------------------------------------------------------------------ teacher-forced scoring

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log P(continuation | context), continuation is the greedy one), tokenized as TemplateLM does."""
        items = []
        for i, req in enumerate(requests):
            context, continuation = req.args[0], req.args[1]
            if context == "":
                cont = self.tok_encode(continuation, add_special_tokens=False)
                # BOS (or EOS) conditions the continuation, unless the continuation starts with it itself
                ctx, cont = ([self.prefix_token_id], cont) if not cont or cont[0] != self.prefix_token_id \
                    else (cont[:1], cont[1:])
            else:
                ctx, cont = self._encode_pair(context, continuation)
            self._check_fit(req, i, len(ctx) + len(cont) - 1, f"context {len(ctx)} + continuation {len(cont)} - 1")
            items.append((ctx, cont))
        scores = self._score(items, disable_tqdm)
        for req, score in zip(requests, scores, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args[:2], score)
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in disjoint windows of ``max_length`` tokens (lm-eval's rolling scheme).

        Unlike HFLM the text is encoded without special tokens: the prefix token (BOS) is the conditioning,
        so a BOS-adding tokenizer does not make the model predict a second BOS."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0], add_special_tokens=False)
            for pair in lm_utils.get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_token_id,
                                                           max_seq_len=self.max_length, context_len=1):
                windows.append(lm_utils.make_disjoint_window(pair))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, self._score(windows, disable_tqdm), strict=True):
            totals[i] += ll
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args[:1], total)
        return totals

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        return self._score([(ctx, cont) for _, ctx, cont in requests], disable_tqdm)

    def _score(self, items: list[tuple[list[int], list[int]]], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """Score (context, continuation) token pairs with one forward per distinct input.

        The input is context + continuation minus its last token; requests with the same input (the four
        one-token answers of a multiple-choice question) share a forward, and only inputs of identical
        length share a batch (no padding)."""
        results: list[tuple[float, bool] | None] = [None] * len(items)
        by_input: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (ctx, cont) in enumerate(items):
            if not cont:
                results[i] = (0.0, True)
            else:
                by_input[tuple(ctx + cont)[:-1]].append(i)
        by_length: dict[int, list[tuple[int, ...]]] = defaultdict(list)
        for inp in by_input:
            by_length[len(inp)].append(inp)
        with progress.bar(total=len(by_input), enabled=not disable_tqdm, desc="loglikelihood") as pbar:
            for n in sorted(by_length, reverse=True):
                inputs = by_length[n]
                for start in range(0, len(inputs), self.batch_size):
                    chunk = inputs[start:start + self.batch_size]
                    rows = [(r, i) for r, inp in enumerate(chunk) for i in by_input[inp]]
                    scores = self._continuation_scores(torch.tensor(chunk, dtype=torch.long),
                                                       [(r, items[i][1]) for r, i in rows])
                    for (_, i), score in zip(rows, scores, strict=True):
                        results[i] = score
                    pbar.update(len(chunk))
        return results

    @torch.no_grad()
    def _continuation_scores(self, ids: torch.Tensor, conts: list[tuple[int, list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log-probs, all greedy) of each continuation, which ends its row ``r`` of ``ids``.

        The LM head runs only on the last ``keep`` positions (the longest continuation), in slices of at
        most ``logits_budget`` logits, so a long rolling window does not hold (length x vocab) floats."""
        ids = ids.to(self.device)
        keep = max(len(c) for _, c in conts)
        step = max(1, self.logits_budget // (ids.shape[0] * self.vocab_size))
        if keep <= step:
            states, head = self.model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits, None
        else:
            cfg = self.model.config
            plain = self.model.get_output_embeddings() is not None and all(
                getattr(cfg, k, None) in (None, 1, 1.0) for k in HEAD_TRANSFORMS)
            if not plain:
                raise LongRoPE2Error(f"LongContextLM: a continuation of {keep} tokens needs {keep * ids.shape[0] * self.vocab_size} "
                                     f"logits (logits_budget {self.logits_budget}) and this model's head cannot run in slices")
            states = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state[:, -keep:]
            head = self.model.get_output_embeddings()
        totals, greedy = [0.0] * len(conts), [True] * len(conts)
        for c0 in range(0, keep, step):
            block = states[:, c0:c0 + step]
            logp = (block if head is None else head(block)).float().log_softmax(-1)
            for j, (row, cont) in enumerate(conts):
                first = keep - len(cont)  # position (within the kept ones) whose logits predict cont[0]
                lo, hi = max(c0, first), min(c0 + logp.shape[1], keep)
                if lo >= hi:
                    continue
                target = torch.tensor(cont[lo - first:hi - first], dtype=torch.long, device=logp.device)
                sel = logp[row, lo - c0:hi - c0]
                totals[j] += float(sel.gather(-1, target[:, None]).sum())
                greedy[j] = greedy[j] and bool((sel.argmax(-1) == target).all())
        return list(zip(totals, greedy))
