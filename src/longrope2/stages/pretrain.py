"""Pretrain the scale model: a small standard LlamaForCausalLM that retrieves inside its window L0.

Recipe (see README, "Scale model"): an optional warm-up on random-token copying (and optionally more
random-token phases, such as associative recall) that lasts until its loss is under a gate (an induction
head first), then a curriculum of RULER-style retrieval sequences built from
training-split documents -- short windows first, then several needles and questions per window, then
L0 with a language-modelling loss on the other tokens. Each curriculum option places its needles at
distances from the question drawn from the corpus's own repeated-identifier distances (``corpus``),
uniformly over line starts (``uniform``), or right after the preamble (``start``, a fixed-position
warm-up). Every answer is followed by a labelled EOS, so greedy decoding stops after it.

Resumable: a checkpoint (model, optimizer, step, data and torch RNG states) is written every
``checkpoint_every`` steps into ``--checkpoint-dir`` (not a Snakemake output), keyed by the hash of the
config subset and the corpus; a restarted run continues from a matching one and ends with the same
weights as an uninterrupted one, and a checkpoint of another config is set aside, never resumed.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import distances as dist
from .. import progress, scoring
from ..artifacts import StageRun, verify_inputs
from ..checkpoints import Checkpoints, fingerprint
from ..corpus import TokenizedCorpus
from ..errors import ConfigError
from ..evaluation import ruler
from ..needles import IGNORE_INDEX, NeedleBuilder, plain_set
from ..training import warmup_cosine

NAME = "pretrain"
HELP = "pretrain the offline scale model (retrieval curriculum), resumable"
CONFIG_KEYS = ("experiment.seed", "model.geometry", "scale_model", "pretrain", "needles.template")
#: arguments naming input artifacts, checked against their producers' manifests before any work
INPUTS = ("corpus",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, metavar="DIR", help="corpus folder with the trained tokenizer")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="resumable checkpoints (default: <out>/../.checkpoints/pretrain)")


def build_model(cfg: dict, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    g, m = cfg["model"]["geometry"], cfg["scale_model"]
    if g.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("the scale model rotates the whole head: model.geometry.partial_rotary_factor must be 1.0")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=m["hidden_size"], intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["layers"], num_attention_heads=m["heads"], num_key_value_heads=m["heads"],
        head_dim=g["head_dim"], max_position_embeddings=g["original_length"], tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": float(g["rope_base"])},
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return LlamaForCausalLM(config)


def curriculum_at(curriculum: list[dict], step: int) -> list[dict]:
    """The options of the last curriculum stage that has started (one is drawn per step)."""
    started = max(c["from_step"] for c in curriculum if c["from_step"] <= step)
    return [c for c in curriculum if c["from_step"] == started]


#: tokens a RULER prompt leaves for its answer and EOS (the schema's default of ``max_new_tokens``, and the
#: default evaluation's needle budget); the curve's RULER prompts use it too
ANSWER_BUDGET = 48


class RulerSource:
    """Fresh samples of RULER's task families for pretraining, disjoint from the evaluation's: the essay
    haystack is cut from the *training* split's text at a random offset, and keys, values and noise come
    from a seed stream of their own (``train-...``; the evaluation's seed is the experiment seed). The
    same generator as the RULER stage writes them, so the base learns RULER's wording, keys (adjective-noun
    pairs, UUIDs) and haystacks, not only this repository's needle template."""

    CHARS_PER_TOKEN = 8  # a haystack slice with room to spare: the generator repeats a short one
    DRAWS = 8  # fresh draws before a length that cannot hold a task's longer keys is an error

    def __init__(self, text: str, tokenizer, rng: random.Random):
        self.text, self.tok, self.rng = text, tokenizer, rng

    @classmethod
    def from_corpus(cls, corpus: TokenizedCorpus, tokenizer, rng: random.Random) -> "RulerSource":
        return cls("\n\n".join(tokenizer.decode(corpus[i].tolist()) for i in range(len(corpus))), tokenizer, rng)

    def sample(self, task: str, length: int, reserve: int, sampler=None) -> tuple[list[int], list[int], int | None]:
        """(prompt ids with BOS, answer ids, needle-to-question distance or None) with prompt + answer +
        EOS within ``length``; ``sampler`` draws the queried needle's distance (else a uniform depth)."""
        r = self.rng
        for attempt in range(self.DRAWS):
            seed, start = f"train-{r.getrandbits(64)}", r.randrange(max(1, len(self.text) - length * self.CHARS_PER_TOKEN))
            haystack = self.text[start : start + length * self.CHARS_PER_TOKEN]
            depth = r.random() if sampler is None else 1.0 - sampler.draw(r, length - reserve) / (length - reserve)
            try:
                s = ruler.generate(task, length, 1, self.tok, haystack, seed, depths=[depth], max_new_tokens=reserve)[0]
            except ConfigError as e:  # these keys are too long for this length: draw again, a few times
                if attempt + 1 < self.DRAWS:
                    continue
                reason = str(e).split(": ", 1)[-1]
                raise ConfigError("pretrain.curriculum", f"RULER task {task} at {length} tokens: {reason}") from None
            prompt, answer = tokenized(self.tok, task, s)
            if len(prompt) + len(answer) + 1 > length:  # a long answer (four UUIDs): the same sample, less haystack
                s = ruler.generate(task, length, 1, self.tok, haystack, seed, depths=[depth], max_new_tokens=len(answer) + 1)[0]
                prompt, answer = tokenized(self.tok, task, s)
            break
        distance = None
        if ruler.ALL_TASKS[task].generator == "niah" and s["depth"] is not None:
            # approximate: the needle's depth in the haystack, scaled to the prompt (the question included)
            distance = max(1, round((1.0 - s["depth"]) * (len(prompt) - 1)))
        return prompt, answer, distance


def tokenized(tok, task: str, sample: dict) -> tuple[list[int], list[int]]:
    """A RULER sample's prompt ids (as the RULER stage feeds them) and its reference answer's ids."""
    prompt = ruler.prompt_ids(tok, sample["input"] + sample["gen_prefix"])
    return prompt, tok(ruler.answer_text(task, sample["outputs"]), add_special_tokens=False)["input_ids"]


def make_batch(builder: NeedleBuilder, opt: dict, batch_size: int, pad_id: int, sampler=None, seen=None,
               ruler_source: RulerSource | None = None):
    """One batch of the option's samples (``length`` tokens each, the last one EOS); ``sampler`` places needles at corpus distances when the option's
    ``placement`` is ``corpus``; ``seen`` (a list) collects each sample's needle-to-question distance."""
    if opt.get("kind", "needle") == "copy":
        return copy_batch(builder, opt["length"], batch_size, opt.get("span", "fixed"), pad_id)
    if opt.get("kind") == "recall":
        return recall_batch(builder, opt["length"], batch_size, opt.get("alphabet"), opt.get("key_tokens", 1),
                            opt.get("separator", ":"), opt.get("query"), opt.get("keys", "random"), pad_id,
                            opt.get("values", "token"))
    if opt.get("kind") == "ruler":
        return ruler_batch(ruler_source, opt, batch_size, pad_id, sampler, seen)
    placement, n = opt.get("placement", "uniform"), opt.get("needles", 1)
    place = sampler if placement == "corpus" else None
    depths = [0.0] * n if placement == "start" else None
    # one token short of the length: the final answer is followed by EOS (labelled), as an instruct model's
    # is, so greedy decoding in the evaluations stops after the answer instead of running to max_new_tokens
    samples = [builder.sample(opt["length"] - 1, n, depths=depths, extra_queries=opt.get("queries", 1) - 1, distances=place)
               for _ in range(batch_size)]
    if seen is not None:
        seen.extend(s.distance for s in samples)
    width = max(len(s.input_ids) for s in samples) + 1
    ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
    lab = torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(samples):
        n_ids = len(s.input_ids)
        ids[i, :n_ids] = torch.from_numpy(s.input_ids)
        lab[i, :n_ids] = torch.from_numpy(s.labels)
        ids[i, n_ids] = lab[i, n_ids] = builder.tok.eos_token_id
    return ids, lab


def ruler_batch(source: RulerSource, opt: dict, batch_size: int, pad_id: int, sampler=None, seen=None):
    """A batch of RULER samples (tasks drawn per sample), the answer and its EOS labelled, right-padded."""
    place = sampler if opt.get("placement", "uniform") == "corpus" else None
    rows = []
    for _ in range(batch_size):
        task = source.rng.choice(opt["tasks"])
        prompt, answer, distance = source.sample(task, opt["length"], opt.get("max_new_tokens", ANSWER_BUDGET), place)
        rows.append((prompt, answer + [source.tok.eos_token_id]))
        if seen is not None and distance is not None:
            seen.append(distance)
    return prompt_answer_batch(rows, pad_id)


def prompt_answer_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of (prompt, answer) rows, right-padded: only the answers are labelled."""
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        lab[i, len(p) : len(p) + len(a)] = torch.tensor(a)
    return ids, lab


def copy_batch(builder: NeedleBuilder, length: int, batch_size: int, span: str = "fixed", pad_id: int = 0):
    """BOS + random tokens + the same tokens again, the copy labelled: only copying (an induction head, the
    mechanism retrieval reuses) can lower that loss. ``span`` ``fixed``: every row copies (length - 1) / 2
    tokens, so the copy always lies the same distance back and a head attending to that offset solves it;
    ``varied``: each row's span is drawn from [a quarter, a half] of the length (the rest padding), so only
    matching the previous token's content does. README, "Scale model", says what each did in probes."""
    half = (length - 1) // 2
    vocab = len(builder.newline)
    ids = torch.full((batch_size, 1 + 2 * half), builder.bos if span == "fixed" else pad_id, dtype=torch.long)
    lab = torch.full_like(ids, IGNORE_INDEX)
    for i in range(batch_size):
        k = half if span == "fixed" else builder.rng.randint(max(2, half // 2), half)
        tokens = torch.tensor([builder.rng.randrange(4, vocab) for _ in range(k)])
        ids[i, 0], ids[i, 1 : 1 + k], ids[i, 1 + k : 1 + 2 * k] = builder.bos, tokens, tokens
        lab[i, 2 + k : 1 + 2 * k] = tokens[1:]  # the first token of the copy cannot be known yet
    return ids, lab


def recall_layout(tok, length: int, key_tokens: int = 1, separator: str = ":",
                  query: str | None = None, value_tokens: int = 1) -> tuple[list[int], list[int], int, int, int]:
    """A recall row's separator ids, query ids (between a queried key and its value), tokens per pair
    (key, separator, value), tokens per query (key, query text, value) and number of pairs in ``length``
    (BOS, the pairs, then each queried again); one-token keys take no separator. ``query`` None: the
    separator again."""
    sep = [] if key_tokens == 1 else tok(separator, add_special_tokens=False)["input_ids"]
    ask = sep if query is None else tok(query, add_special_tokens=False)["input_ids"]
    unit, q_unit = key_tokens + len(sep) + value_tokens, key_tokens + len(ask) + value_tokens
    return sep, ask, unit, q_unit, (length - 1) // (unit + q_unit)


#: characters of a UUID4 value (8-4-4-4-12 hex digits), as RULER's niah_single_3 and niah_multikey_3 ask for
UUID_CHARS = 36


def recall_value_tokens(builder: NeedleBuilder, values: str = "token") -> int:
    """Tokens of one recall value: 1, a needle value's (a space and 7 digits) with ``values="digits"``, or at
    most a space and 36 characters with ``values="uuid"`` (a byte-level BPE never makes more tokens than
    ASCII characters; shorter values leave padding at the row's end)."""
    if values == "uuid":
        return 1 + UUID_CHARS
    return len(builder.encode(" " + "0" * 7)) if values == "digits" else 1


def recall_values(builder: NeedleBuilder, values: str, n: int, top: int) -> list[tuple[int, ...]]:
    """``n`` recall values: random tokens below ``top``, needle values, or RULER's UUID4s (its own generator)."""
    if values == "digits":
        return [tuple(builder.encode(" " + builder.values())) for _ in range(n)]
    if values == "uuid":
        return [tuple(builder.encode(" " + ruler.random_needle("uuids", builder.rng))) for _ in range(n)]
    return [(builder.rng.randrange(4, top),) for _ in range(n)]


def recall_word_keys(builder: NeedleBuilder) -> list[tuple[int, ...]]:
    """The needles' key words as recall keys, each as the question and the needle tokenize it (leading space)."""
    return [tuple(builder.encode(" " + w)) for w in builder.keys]


def recall_batch(builder: NeedleBuilder, length: int, batch_size: int, alphabet: int | None = None, key_tokens: int = 1,
                 separator: str = ":", query: str | None = None, keys: str = "random", pad_id: int | None = None,
                 values: str = "token"):
    """Associative recall (MQAR): BOS, key-value pairs of random tokens, then the keys again in another order,
    each followed by its value (labelled). Only matching the queried key (not copying *a* value) lowers the
    loss: the step a base that copies some needle's value is missing.

    ``key_tokens`` > 1: each key is that many tokens of the alphabet followed by ``separator`` (":", or " is:"
    as in a needle's "for apple is: 1234"), its value a token of the whole vocabulary. With a small alphabet
    no single key token tells the pairs apart, so the answer position must gather the whole key, as
    multi-key needles (keys of 3-5 shared sub-word pieces) need. ``query``: the text between a queried key
    and its value (e.g. " mentioned in the provided text is", as in a needle's question), so the key must be
    carried past it to the answer position; default the separator. ``keys="words"``: the needles' own key
    words instead (" apple" = " ap" "p" "le": 1-5 sub-word pieces of the corpus's vocabulary, always followed
    by the separator); rows are laid out for the longest word and padded with ``pad_id`` at the end.
    ``values="digits"``: each value is a needle's, " " and 7 digits, every token of it labelled in the queries
    (the first digit stands two tokens after the query's last word, as in a needle's answer);
    ``values="uuid"``: a UUID4 as RULER's niah_single_3 hides one -- ~35 tokens to copy in order, where a base
    that starts the right value drifts into another's."""
    words = recall_word_keys(builder) if keys == "words" else None
    if words:
        key_tokens = max(map(len, words))
    vocab = 4 + alphabet if alphabet else len(builder.newline)
    value_top = vocab if key_tokens == 1 and not words else len(builder.newline)
    n_value = recall_value_tokens(builder, values)
    sep, ask, unit, q_unit, pairs = recall_layout(builder.tok, length, key_tokens, separator, query, n_value)
    padded = words or values != "token"
    ids = torch.full((batch_size, 1 + (unit + q_unit) * pairs), pad_id if padded else builder.bos, dtype=torch.long)
    lab = torch.full_like(ids, IGNORE_INDEX)
    for i in range(batch_size):
        if words:
            row_keys = builder.rng.sample(words, pairs)
        elif key_tokens == 1:
            row_keys = [(k,) for k in builder.rng.sample(range(4, vocab), pairs)]
        else:
            row_keys = []
            while len(row_keys) < pairs:  # distinct keys; tokens may repeat across keys
                key = tuple(builder.rng.randrange(4, vocab) for _ in range(key_tokens))
                if key not in row_keys:
                    row_keys.append(key)
        vals = recall_values(builder, values, len(row_keys), value_top)
        order = builder.rng.sample(range(pairs), pairs)
        row = [builder.bos] + [t for j in range(pairs) for t in (*row_keys[j], *sep, *vals[j])]
        for j in order:  # each query's value is labelled where it stands
            row += [*row_keys[j], *ask]
            lab[i, len(row) : len(row) + len(vals[j])] = torch.tensor(vals[j])
            row += vals[j]
        ids[i, : len(row)] = torch.tensor(row)
    return ids, lab


def loss_fn(model, ids, lab, lm_weight: float, pad_id: int):
    """Mean cross-entropy on answer tokens plus ``lm_weight`` x mean next-token loss on the other tokens.

    The two means are taken separately, so the few answer tokens keep their weight next to hundreds of
    language-modelling tokens; with ``lm_weight`` 0 the LM head runs only on the answer positions."""
    hidden = model.base_model(input_ids=ids[:, :-1]).last_hidden_state
    target = ids[:, 1:]
    is_answer = lab[:, 1:] != IGNORE_INDEX
    is_text = ~is_answer & (target != pad_id) if lm_weight > 0 else torch.zeros_like(is_answer)
    rows = is_answer | is_text
    ce = F.cross_entropy(model.get_output_embeddings()(hidden[rows]), target[rows], reduction="none")
    answer_loss = (ce * is_answer[rows]).sum() / is_answer.sum().clamp(min=1)
    text_loss = (ce * is_text[rows]).sum() / is_text.sum().clamp(min=1)
    return answer_loss + lm_weight * text_loss, answer_loss


def train_step(model, opt, ids, lab, lm_weight: float, pad_id: int, grad_clip: float) -> tuple[float, float]:
    """One optimizer step on a batch: (loss, answer loss)."""
    loss, answer_loss = loss_fn(model, ids, lab, lm_weight, pad_id)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item(), answer_loss.item()


def show(bar, losses: tuple[float, float], length: int, tokens: int, t0: float) -> None:
    bar.set_postfix(loss=f"{losses[0]:.3f}", ans=f"{losses[1]:.3f}", len=length,
                    tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")


def run(cfg: dict, out: str, args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    p, seed = cfg["pretrain"], cfg["experiment"]["seed"]
    l0 = cfg["model"]["geometry"]["original_length"]
    ckpt_dir = Path(args.checkpoint_dir or Path(out).parent / ".checkpoints" / "pretrain")
    ckpts = Checkpoints(ckpt_dir, fingerprint(cfg, verify_inputs([args.corpus])))
    tok = AutoTokenizer.from_pretrained(Path(args.corpus) / "tokenizer")
    template = cfg["needles"]["template"]
    train = NeedleBuilder(TokenizedCorpus(args.corpus, "train"), tok, template, seed=seed)
    torch.manual_seed(seed)
    model = build_model(cfg, tok)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    other = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p["weight_decay"]}, {"params": other, "weight_decay": 0.0}],
                            lr=p["lr"], betas=(0.9, 0.95))
    ruler_source = None
    if any(o.get("kind") == "ruler" for o in p["curriculum"]):
        ruler_source = RulerSource.from_corpus(train.corpus, tok, train.rng)  # the builder's rng: checkpointed
        check = RulerSource(ruler_source.text, tok, random.Random(0))  # checking moves no training draw
    warm = p.get("warmup")
    phases = warm if isinstance(warm, list) else [warm] if warm else []  # one phase or several, in order
    field = lambda option: "pretrain.warmup" if any(option is w for w in phases) else "pretrain.curriculum"  # noqa: E731
    for option in p["curriculum"] + phases:  # fail now, not at the step where a draw does not fit
        if option.get("kind") == "ruler":
            for task in option["tasks"]:
                check.sample(task, option["length"], option.get("max_new_tokens", ANSWER_BUDGET))
            continue
        if option.get("kind") == "recall" and option.get("keys") == "words":  # distinct words: as many as pairs
            k, n_value = max(map(len, recall_word_keys(train))), recall_value_tokens(train, option.get("values", "token"))
            pairs = recall_layout(tok, option["length"], k, option.get("separator", ":"), option.get("query"), n_value)[-1]
            if not 1 <= pairs <= len(train.keys):
                raise ConfigError(field(option), f"option {option}: keys 'words' lays out {pairs} pairs of keys up "
                                  f"to {k} tokens; allowed: a length that holds 1 to {len(train.keys)} pairs")
        elif option.get("kind") == "recall":  # distinct keys: at least as many as pairs, all in the vocabulary
            k, top = option.get("key_tokens", 1), len(train.newline) - 4
            n_value = recall_value_tokens(train, option.get("values", "token"))
            pairs = recall_layout(tok, option["length"], k, option.get("separator", ":"), option.get("query"), n_value)[-1]
            least = next(a for a in range(1, top + 1) if a ** k >= pairs)
            if not (pairs >= 1 and least <= option.get("alphabet", top) <= top):
                raise ConfigError(field(option), f"option {option}: alphabet must hold its {pairs} distinct keys "
                                  f"of {k} token(s) and lie in the vocabulary; allowed: {least} <= alphabet <= {top}")
        random_tokens = option.get("kind", "needle") in ("copy", "recall")
        need = 3 if random_tokens else 1 + train.longest(option.get("needles", 1), option.get("queries", 1))  # + EOS
        if option["length"] < need:
            raise ConfigError(field(option), f"option {option}: {option['length']} tokens cannot hold the "
                              f"needle template with the longest keys ({need} tokens); allowed: length >= {need}")
    curriculum_rng = random.Random(seed + 1)
    corpus_distances = dist.repeat_distances(train.corpus, tok)
    sampler = dist.DistanceSampler.from_distances(corpus_distances, l0)
    start, log, prior_wall, tokens, seen = 0, [], 0.0, 0, []
    if (state := ckpts.load()) is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        train.rng.setstate(state["builder_rng"])
        curriculum_rng.setstate(state["curriculum_rng"])
        torch.set_rng_state(state["torch_rng"])
        start, log, prior_wall, tokens = state["step"], state["log"], state["wall_s"], state["tokens"]
        seen = state["seen"]
        ws = state.get("warmup")
        where = (f"in the warm-up at step {ws['steps']} (phase {ws['phase'] + 1} of {len(phases)})"
                 if ws and not ws["done"] else f"from step {start}")
        print(f"resuming {where} ({ckpts.resumed_from})", flush=True)
    n_params = sum(q.numel() for q in model.parameters())
    t0 = time.perf_counter() - prior_wall
    model.train()

    def save(index: int, step: int) -> None:
        ckpts.save(index, {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "builder_rng": train.rng.getstate(), "curriculum_rng": curriculum_rng.getstate(),
                           "torch_rng": torch.get_rng_state(), "log": log, "tokens": tokens, "seen": seen,
                           "wall_s": time.perf_counter() - t0, "warmup": warm_state})

    warm_state = state.get("warmup") if state is not None else None
    if phases and (warm_state is None or not warm_state["done"]):
        # steps: warm-up steps over all phases (checkpoint indices, LR ramp); phase_steps: inside the current one
        warm_state = warm_state or {"steps": 0, "phase": 0, "phase_steps": 0, "losses": [], "done": False, "ended": []}
        while warm_state["phase"] < len(phases):
            phase = phases[warm_state["phase"]]
            bar = progress.bar(range(warm_state["phase_steps"], phase["max_steps"]), initial=warm_state["phase_steps"],
                               total=phase["max_steps"], desc=f"warm-up {warm_state['phase'] + 1}/{len(phases)} ({phase['kind']})")
            for w in bar:
                for g in opt.param_groups:
                    g["lr"] = p["lr"] * min(1.0, (warm_state["steps"] + 1) / p["warmup_steps"])
                ids, lab = make_batch(train, phase, phase.get("batch_size", p["batch_size"]), tok.pad_token_id)
                losses = train_step(model, opt, ids, lab, 0.0, tok.pad_token_id, p["grad_clip"])
                tokens += ids.numel()
                show(bar, losses, phase["length"], tokens, t0)
                warm_state["steps"], warm_state["phase_steps"] = warm_state["steps"] + 1, w + 1
                warm_state["losses"] = (warm_state["losses"] + [losses[1]])[-phase["window"]:]
                if len(warm_state["losses"]) == phase["window"] and np.mean(warm_state["losses"]) < phase["until_loss"]:
                    break  # this task is learned: the next phase (or the curriculum) starts now
                if warm_state["steps"] % p["checkpoint_every"] == 0:
                    save(warm_state["steps"], 0)
            loss = float(np.mean(warm_state["losses"]))
            warm_state["ended"].append({"kind": phase["kind"], "length": phase["length"], "steps": warm_state["phase_steps"],
                                        "gate": phase["until_loss"], "answer_loss": round(loss, 4),
                                        "reached": bool(loss < phase["until_loss"])})
            progress.write(f"warm-up phase {warm_state['phase'] + 1} ({phase['kind']}) ended after "
                           f"{warm_state['phase_steps']} steps, answer loss {loss:.3f} (gate {phase['until_loss']})")
            warm_state.update(phase=warm_state["phase"] + 1, phase_steps=0, losses=[])
        warm_state["done"] = True
    offset = warm_state["steps"] if warm_state else 0  # checkpoint files keep counting up after the warm-up
    ramp = 1 if warm_state else p["warmup_steps"]  # after a warm-up the rate is at its peak: no second ramp
    bar = progress.bar(range(start, p["steps"]), initial=start, total=p["steps"], desc="pretrain")
    for step in bar:
        if step % p["eval_every"] == 0:
            log.append(evaluate(model, cfg, args.corpus, tok, step, time.perf_counter() - t0, tokens))
        for g in opt.param_groups:
            g["lr"] = p["lr"] * warmup_cosine(step, p["steps"], ramp, p["min_lr_ratio"])
        option = curriculum_rng.choice(curriculum_at(p["curriculum"], step))
        ids, lab = make_batch(train, option, option.get("batch_size", p["batch_size"]), tok.pad_token_id, sampler, seen,
                              ruler_source)
        losses = train_step(model, opt, ids, lab, option.get("lm_weight", p["lm_weight"]), tok.pad_token_id, p["grad_clip"])
        tokens += ids.numel()
        show(bar, losses, option["length"], tokens, t0)
        if (step + 1) % p["checkpoint_every"] == 0 and step + 1 < p["steps"]:
            save(offset + step + 1, step + 1)
    log.append(evaluate(model, cfg, args.corpus, tok, p["steps"], time.perf_counter() - t0, tokens))
    wall = time.perf_counter() - t0
    with StageRun("pretrain", out, cfg, inputs=[args.corpus], seed=seed, prior_wall_s=prior_wall,
                  extra={"train_wall_s": round(wall, 1), "parameters": n_params}) as run_:
        model.save_pretrained(run_.path("model"), safe_serialization=True)
        tok.save_pretrained(run_.path("model"))
        run_.write_csv("pretrain_curve.csv", log)
        seen_d = np.asarray(seen, dtype=np.int64)
        edges = dist.log_edges(l0)
        in_window = corpus_distances[corpus_distances <= l0]
        rows = [{"from": int(a), "to": int(b) - 1, "corpus": round(float(c), 5), "pretraining": round(float(t), 5)}
                for a, b, c, t in zip(edges[:-1], edges[1:], dist.histogram(in_window, edges), dist.histogram(seen_d, edges))]
        run_.write_csv("distances.csv", rows)
        plot_distances(rows, l0, run_.path("distances.png"))
        run_.write_json("pretrain.json", {
            "parameters": n_params, "steps": p["steps"], "tokens": tokens, "wall_s": round(wall, 1),
            "tokens_per_s": round(tokens / wall), "final": log[-1],
            # samples behind each curve accuracy: the repository's needles, and each RULER task
            "curve_samples": {"needles": p["eval_samples"], "ruler_per_task": ruler_curve_samples(p)},
            # one record per phase: a list where the config gives a list of phases
            "warmup": None if not phases else warm_state["ended"] if isinstance(warm, list) else warm_state["ended"][0],
            "distances": {"corpus": dist.summary(corpus_distances, l0), "corpus_within_L0": dist.summary(in_window, l0),
                          "pretraining": dist.summary(seen_d, l0)}})
    ckpts.clear()
    print(f"pretrained {n_params / 1e6:.2f}M params, {p['steps']} steps, {wall / 60:.1f} min; "
          f"L0={l0} single={log[-1]['acc_single']:.3f} multi={log[-1]['acc_multi']:.3f} -> {out}")


@torch.no_grad()
def evaluate(model, cfg, corpus_dir, tok, step, wall, tokens) -> dict:
    """Learning-curve point: validation needle accuracy at L0 (its own seed, so it never moves training)."""
    p, l0 = cfg["pretrain"], cfg["model"]["geometry"]["original_length"]
    val = TokenizedCorpus(corpus_dir, "validation")
    model.eval()
    rng_state = torch.get_rng_state()
    template = cfg["needles"]["template"]
    single, multi = (scoring.needle_accuracy(model, NeedleBuilder(val, tok, template, seed=seed).draw(l0, k, p["eval_samples"]),
                                             8192)[0] for seed, k in ((101, 1), (202, 4)))
    ruler_acc = {}
    for task, (ids, lab) in ruler_curve_set(corpus_dir, tok, l0, ruler_curve_samples(p)).items():
        ruler_acc[f"acc_{task}"] = float(scoring.score(model, ids, lab).all_correct.float().mean())
    plain = plain_set(val, tok.bos_token_id, l0, p["ppl_samples"], seed=303)
    sc = scoring.score(model, torch.from_numpy(plain["input_ids"]).long(), torch.from_numpy(plain["labels"]).long())
    torch.set_rng_state(rng_state)
    model.train()
    rec = {"step": step, "wall_s": round(wall, 1), "tokens": tokens, "acc_single": single, "acc_multi": multi,
           **ruler_acc, "ppl_L0": round(float(torch.exp(sc.nll_sum.sum() / sc.n_tokens.sum())), 3)}
    progress.write(str(rec))
    return rec


CURVE_TASKS = ("niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1")


def ruler_curve_samples(p: dict) -> int:
    """Samples per RULER task on the curve: a quarter of the needle samples, so the four tasks cost as much."""
    return max(1, p["eval_samples"] // 4)
_curve_sets: dict = {}


def ruler_curve_set(corpus_dir, tok, length: int, n: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """RULER needle samples at L0 over the validation split (seed ``curve``, built once per run): the curve
    shows whether the base answers RULER's prompts, teacher-forced (every answer token the argmax)."""
    key = (str(corpus_dir), length, n)
    if key not in _curve_sets:
        val = TokenizedCorpus(corpus_dir, "validation")
        source = RulerSource.from_corpus(val, tok, random.Random(0))
        sets = {}
        for task in CURVE_TASKS:
            try:
                samples = ruler.generate(task, length, n, tok, source.text, "curve", max_new_tokens=ANSWER_BUDGET)
            except ConfigError:  # the task does not fit in L0 (a small test window): not on the curve
                continue
            rows = []
            for sample in samples:
                prompt, answer = tokenized(tok, task, sample)
                rows.append((prompt, answer[: length - len(prompt)]))
            sets[task] = prompt_answer_batch(rows, tok.pad_token_id)
        _curve_sets[key] = sets
    return _curve_sets[key]


def plot_distances(rows: list[dict], l0: int, path) -> None:
    """Corpus vs pretraining needle-to-question distance distributions (log-spaced bins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, [r["corpus"] for r in rows], 0.4, label="corpus: identifier to its previous occurrence")
    ax.bar(x + 0.2, [r["pretraining"] for r in rows], 0.4, label="pretraining: needle to question")
    ax.set_xticks(x, [f"{r['from']}" for r in rows], rotation=60, fontsize=7)
    ax.set_xlabel(f"distance in tokens (bin start, log bins up to L0 = {l0})")
    ax.set_ylabel("share")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})  # StageRun stages it and renames on success
    plt.close(fig)
