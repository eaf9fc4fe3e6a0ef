"""RULER-style needle samples built from tokenized held-out documents.

A sample of length L is exactly L tokens: one BOS, the preamble, haystack tokens (consecutive lines of
corpus documents) with needle sentence(s) inserted at line boundaries at the requested depths, the
question, and the answer (`` {7 digits}``) as the last tokens -- the only labelled ones. Nothing is ever
truncated: the haystack is sized so everything fits. The same builder makes the scale model's
retrieval-training documents, the retrieval check, the search's needle-PPL sets and the evaluations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .corpus import TokenizedCorpus
from .errors import ConfigError

IGNORE_INDEX = -100

DEFAULT_TEMPLATE = {
    "preamble": "A special magic number is hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the number afterwards.\n",
    "needle": "One of the special magic numbers for {key} is: {value}.\n",
    "question": "\nWhat is the special magic number for {key} mentioned in the provided text? "
    "The special magic number for {key} mentioned in the provided text is",
    "answer": " {value}",
}

# Keys are ordinary English words (RULER uses word keys); fixed so samples do not depend on the corpus.
KEY_WORDS = (
    "apple anchor arrow autumn badge bamboo banner barrel basket beacon berry blanket blossom bottle "
    "bracket breeze bridge bubble butter button cabin cactus camera candle canyon carpet castle cedar "
    "chalk cherry circle cliff clover cobalt comet copper coral cotton crater crystal dagger desert "
    "dolphin dragon eagle ember falcon feather fern forest fossil fountain galaxy garden garlic glacier "
    "granite harbor hazel helmet hollow honey horizon island ivory jacket jasmine jungle kettle ladder "
    "lantern lemon lilac lizard magnet maple marble meadow meteor mirror monkey mosaic needle nickel "
    "oasis olive orbit orchid otter paddle palace panther parrot pebble pepper piano pillow pirate "
    "planet pocket pollen puzzle quartz rabbit radar raven ribbon rocket saddle salmon sapphire "
    "scarlet shadow silver sparrow spider spiral sponge summit sunset tablet temple thunder tiger "
    "timber tomato tulip tunnel turtle velvet violet walnut willow window winter wizard yellow zebra"
).split()


@dataclass(frozen=True)
class NeedleSample:
    input_ids: np.ndarray  # int64, exactly `length` tokens, ends with the answer
    labels: np.ndarray  # IGNORE_INDEX except the answer tokens
    answer_len: int
    value: str
    depths: tuple[float, ...]  # where the needles start, as a fraction of the haystack
    distance: int = 0  # tokens between the end of the asked needle and the question (its evidence distance)
    answers: tuple[tuple[int, ...], ...] = ()  # every needle's answer tokens, in haystack order
    asked: int = 0  # the asked needle's place in that order

    @property
    def prompt(self) -> np.ndarray:
        return self.input_ids[: len(self.input_ids) - self.answer_len]


class NeedleBuilder:
    """Deterministic (seeded) sample factory over one tokenized split."""

    def __init__(self, corpus: TokenizedCorpus, tokenizer, template: Mapping[str, str] | None = None,
                 seed: int = 0, keys: Sequence[str] = KEY_WORDS, min_doc_tokens: int = 64):
        self.tok = tokenizer
        self.t = {**DEFAULT_TEMPLATE, **(template or {})}
        self.keys = list(keys)
        self.rng = random.Random(seed)
        self.docs = [i for i in range(len(corpus)) if len(corpus[i]) >= min_doc_tokens]
        if not self.docs:
            raise ConfigError("corpus", f"no {corpus.split} document has {min_doc_tokens}+ tokens for needle haystacks")
        self.corpus = corpus
        self.bos = tokenizer.bos_token_id
        if self.bos is None:
            raise ConfigError("model.id", "the tokenizer has no BOS token; needle samples start with one")
        vocab = tokenizer.get_vocab()
        self.newline = np.zeros(max(vocab.values()) + 1, dtype=bool)
        for token, idx in vocab.items():
            # byte-level BPE merges a newline with the next line's indentation ("\n    "): any token holding
            # a newline ends a line, and the next token starts one
            if "\n" in tokenizer.convert_tokens_to_string([token]):
                self.newline[idx] = True
        self.preamble = self.encode(self.t["preamble"])

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def haystack(self, n: int) -> np.ndarray:
        """n tokens of consecutive text starting at a line start (documents concatenated as needed)."""
        parts, have = [], 0
        while have < n:
            doc = np.asarray(self.corpus[self.rng.choice(self.docs)], dtype=np.int64)
            start = 0
            if not parts:
                starts = np.flatnonzero(self.newline[doc[:-1]]) + 1
                start = int(self.rng.choice(starts.tolist())) if len(starts) else 0
            piece = doc[start : start + n - have]
            parts.append(piece)
            have += len(piece)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def longest(self, n_needles: int, queries: int = 1) -> int:
        """The most tokens the fixed parts of a sample can take (BOS, preamble, needles, questions and
        answers, with the longest keys): a length below it may fail for some draws of keys."""
        def size(part: str, key: str) -> int:
            return len(self.encode(self.t[part].format(key=key, value="0" * 7)))

        needle = sorted((size("needle", k) for k in self.keys), reverse=True)[:n_needles]
        qa = max(size("question", k) for k in self.keys) + size("answer", "")
        return 1 + len(self.preamble) + sum(needle) + queries * qa

    def draw(self, length: int, n_needles: int, n: int) -> list[NeedleSample]:
        """n samples in a row, needles at uniformly drawn line boundaries."""
        return [self.sample(length, n_needles) for _ in range(n)]

    def values(self) -> str:
        return "".join(self.rng.choice("0123456789") for _ in range(7))

    def sample(self, length: int, n_needles: int = 1, depths: Sequence[float] | None = None,
               extra_queries: int = 0, distances=None) -> NeedleSample:
        """One sample of exactly ``length`` tokens; the first needle is the one asked about.

        ``depths`` (fractions in [0, 1]) fix where the needles go; ``distances`` (a
        :class:`~longrope2.distances.DistanceSampler`) draws each needle's distance in haystack tokens
        back from the question instead; uniform line boundaries otherwise. ``extra_queries``
        appends further question/answer pairs about other needles *before* the final question (used by
        the scale model's retrieval training: more supervised answers per sequence).
        """
        r = self.rng
        keys = r.sample(self.keys, n_needles)
        vals = [self.values() for _ in keys]
        needles = [self.encode(self.t["needle"].format(key=k, value=v)) for k, v in zip(keys, vals)]
        order = list(range(1, n_needles)) if n_needles > 1 else [0]
        extra = [r.choice(order) for _ in range(extra_queries)]
        qa = [(self.encode(self.t["question"].format(key=keys[i])), self.encode(self.t["answer"].format(value=vals[i])))
              for i in extra + [0]]
        fixed = 1 + len(self.preamble) + sum(map(len, needles)) + sum(len(q) + len(a) for q, a in qa)
        n_hay = length - fixed
        if n_hay < 0:
            raise ConfigError("length", f"{length} tokens cannot hold the needle template ({fixed} tokens)")
        hay = self.haystack(n_hay)
        bounds = np.concatenate([[0], np.flatnonzero(self.newline[hay]) + 1])
        bounds = bounds[bounds <= len(hay)]
        if distances is not None:
            # the line boundary nearest to the drawn distance back from the end of the haystack
            cuts = [int(bounds[np.abs(bounds - (len(hay) - distances.draw(r, len(hay)))).argmin()]) for _ in needles]
        elif depths is None:
            cuts = [int(r.choice(bounds.tolist())) for _ in needles]
        else:
            # nearest line boundary at or after each requested depth
            cuts = [int(bounds[min(np.searchsorted(bounds, d * len(hay)), len(bounds) - 1)]) for d in depths]
        pieces, labels, last, at, asked = [[self.bos], self.preamble], [], 0, 1 + len(self.preamble), 0
        in_text = sorted(enumerate(zip(cuts, needles)), key=lambda x: x[1][0])
        for j, (cut, nd) in in_text:
            at += cut - last
            pieces += [hay[last:cut], nd]
            at += len(nd)
            asked = at if j == 0 else asked
            last = cut
        pieces.append(hay[last:])
        body = np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])
        ids, lab = [body], [np.full(len(body), IGNORE_INDEX, dtype=np.int64)]
        for j, (q, a) in enumerate(qa):
            ids += [np.asarray(q, dtype=np.int64), np.asarray(a, dtype=np.int64)]
            lab += [np.full(len(q), IGNORE_INDEX, dtype=np.int64), np.asarray(a, dtype=np.int64)]
        input_ids, labels = np.concatenate(ids), np.concatenate(lab)
        assert len(input_ids) == length, (len(input_ids), length)
        denom = max(len(hay), 1)
        answers = tuple(tuple(self.encode(self.t["answer"].format(value=vals[j]))) for j, _ in in_text)
        return NeedleSample(input_ids, labels, len(qa[-1][1]), vals[0], tuple(c / denom for c in cuts), len(body) - asked,
                            answers, [j for j, _ in in_text].index(0))


# --------------------------------------------------------------------------------------------------
# Fixed sample sets (search fitness, evaluation): stored as .npz with input_ids/labels (N x L)
# --------------------------------------------------------------------------------------------------


def eval_lengths(original_length: int, target_length: int, multiples: Sequence[float]) -> list[int]:
    """L0 x each multiple up to the target, and the target itself."""
    lengths = {int(round(m * original_length)) for m in multiples if m * original_length <= target_length}
    return sorted(lengths | {original_length, target_length})


def needle_set(builder: NeedleBuilder, length: int, n: int, n_depths: int) -> dict[str, np.ndarray]:
    """n samples of one length, the needle at ``n_depths`` evenly spread depths in turn."""
    depths = np.linspace(0.0, 1.0, n_depths)
    samples = [builder.sample(length, 1, depths=[depths[i % n_depths]]) for i in range(n)]
    return {
        "input_ids": np.stack([s.input_ids for s in samples]).astype(np.int32),
        "labels": np.stack([s.labels for s in samples]).astype(np.int32),
        "depths": np.array([s.depths[0] for s in samples]),
        "values": np.array([s.value for s in samples]),
    }


def plain_set(corpus: TokenizedCorpus, bos: int, length: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """BOS + ``length-1`` consecutive tokens (documents concatenated), every token labelled."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        start = int(rng.integers(0, max(1, corpus.n_tokens - length)))
        rows.append(np.concatenate([[bos], corpus.tokens[start : start + length - 1]]).astype(np.int32))
    ids = np.stack(rows)
    return {"input_ids": ids, "labels": ids.copy()}


def save_set(path, arrays: Mapping[str, np.ndarray]) -> dict:
    """Write one set; returns its summary (samples, length, labelled tokens) for the stage's JSON."""
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return {"samples": int(arrays["input_ids"].shape[0]), "length": int(arrays["input_ids"].shape[1]),
            "labelled_tokens": int((arrays["labels"] != IGNORE_INDEX).sum())}


def load_set(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
