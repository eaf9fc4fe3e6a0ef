"""Evidence-to-question distances: how far back natural text reaches, and placements that follow it.

LongRoPE2's premise is that rotary pairs whose period is near or beyond L0 are under-trained because
long-range dependencies are rare in natural text. The scale model's pretraining keeps that premise by
placing each needle at a distance from its question drawn from the corpus's own distribution: the
distance, in tokens, from an identifier-like token back to its previous occurrence in the same document
(repeated names in code are its long-range dependencies). Most such distances are short and the tail
is heavy, as the histogram this module writes shows next to the distances pretraining actually saw.
"""

from __future__ import annotations

import keyword
import re

import numpy as np

from .corpus import TokenizedCorpus

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


def identifier_tokens(tokenizer) -> np.ndarray:
    """Boolean mask over the vocabulary: tokens that read as an identifier of 3+ characters (no keyword)."""
    vocab = tokenizer.get_vocab()
    mask = np.zeros(max(vocab.values()) + 1, dtype=bool)
    kw = set(keyword.kwlist)
    for token, idx in vocab.items():
        text = tokenizer.convert_tokens_to_string([token]).strip()
        mask[idx] = bool(_IDENT.fullmatch(text)) and text not in kw
    return mask


def repeat_distances(corpus: TokenizedCorpus, tokenizer, max_documents: int | None = None) -> np.ndarray:
    """Distance from every identifier token to its previous occurrence in the same document (all of them)."""
    mask = identifier_tokens(tokenizer)
    out = []
    for i in range(len(corpus) if max_documents is None else min(len(corpus), max_documents)):
        doc = np.asarray(corpus[i], dtype=np.int64)
        pos = np.flatnonzero(mask[doc])
        if len(pos) < 2:
            continue
        ids = doc[pos]
        order = np.lexsort((pos, ids))  # by token id, then position
        same = ids[order][1:] == ids[order][:-1]
        out.append((pos[order][1:] - pos[order][:-1])[same])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


class DistanceSampler:
    """Draws distances from a histogram (``weights[d]`` for distance d), conditioned on d <= a maximum."""

    def __init__(self, weights: np.ndarray):
        self.cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
        if len(self.cdf) < 2 or self.cdf[-1] <= 0:
            raise ValueError("the distance histogram is empty")

    @classmethod
    def from_distances(cls, distances: np.ndarray, max_distance: int) -> "DistanceSampler":
        d = distances[(distances >= 1) & (distances <= max_distance)]
        return cls(np.bincount(d, minlength=max_distance + 1).astype(np.float64))

    def draw(self, rng, max_distance: int) -> int:
        """One distance in [1, max_distance] (``rng``: a ``random.Random``)."""
        top = self.cdf[min(max_distance, len(self.cdf) - 1)]
        return int(np.searchsorted(self.cdf, rng.random() * top, side="right"))


def histogram(distances: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of distances per bin (``edges`` as numpy.histogram takes them)."""
    counts, _ = np.histogram(distances, bins=edges)
    return counts / max(counts.sum(), 1)


def log_edges(max_distance: int, per_octave: int = 2) -> np.ndarray:
    """Log-spaced bin edges from 1 to max_distance (inclusive), integers, strictly increasing."""
    n = int(np.ceil(np.log2(max_distance) * per_octave))
    edges = np.unique(np.round(np.logspace(0, np.log2(max_distance + 1), n + 1, base=2)).astype(int))
    return edges


def summary(distances: np.ndarray, l0: int) -> dict:
    """Median, 90th percentile and the share beyond L0/4, L0/2 and L0."""
    d = np.asarray(distances)
    if not len(d):
        return {"n": 0}
    return {"n": int(len(d)), "median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
            "share_over_quarter_L0": float((d > l0 / 4).mean()), "share_over_half_L0": float((d > l0 / 2).mean()),
            "share_over_L0": float((d > l0).mean())}
