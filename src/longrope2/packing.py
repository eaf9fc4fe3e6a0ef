"""Mixed context window training rows, packed from a tokenized corpus (never re-tokenized).

- short rows: documents no longer than L0 (for corpora of long files: pieces of at most L0 tokens cut
  from them), each starting with BOS, positions restarting at 0 per document; attention stays inside a
  document because transformers derives a packed-sequence mask from restarting ``position_ids``;
- long rows: documents longer than L0, a window of up to the target length each (several long
  documents when one is shorter than the row), positions 0..L-1, full causal attention over the row.

With ``needle_fraction > 0`` a packed document is, with that probability, a RULER-style needle sample
of the same length instead of plain text, so fine-tuning keeps the retrieval the scale model was
pre-trained on. Every token but a document's BOS is supervised (LM loss), needle samples included,
so short and long rows carry the same kind of supervision; ``answers`` marks the answer tokens (and their
EOS), which ``finetune.answer_weight`` weights again, alike in both row types.

Row ``i`` is a pure function of ``(seed, i)``: the data position of a resumed run is just its step, and
DDP ranks take disjoint row indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .corpus import TokenizedCorpus
from .errors import ConfigError
from .needles import IGNORE_INDEX


@dataclass(frozen=True)
class RowSpec:
    length: int  # target length L
    original_length: int  # L0
    short_fraction: float  # probability that a row is a short-window row
    seed: int
    min_short: int = 16  # shortest short document worth packing
    needle_fraction: float = 0.0  # probability that a packed document is a needle sample


class Packer:
    def __init__(self, corpus: TokenizedCorpus, spec: RowSpec, bos: int, needles=None):
        self.c, self.spec, self.bos, self.needles = corpus, spec, bos, needles
        if spec.needle_fraction > 0 and needles is None:
            raise ValueError("needle_fraction > 0 needs a NeedleBuilder")
        lengths = corpus.lengths()
        self.long_docs = np.flatnonzero(lengths > spec.original_length)
        self.any_docs = np.flatnonzero(lengths >= spec.min_short)
        if spec.short_fraction < 1 and len(self.long_docs) == 0:
            raise ConfigError("finetune.short_fraction", f"the corpus has no document longer than L0={spec.original_length}; "
                                                         "long rows need some (or set short_fraction: 1)")
        if len(self.any_docs) == 0:
            raise ConfigError("corpus", "the train split has no usable documents for fine-tuning rows")

    def row(self, index: int) -> dict[str, np.ndarray]:
        """input_ids, position_ids, labels (HF convention: labels[t] = input_ids[t], -100 = no loss), answers
        (needle answers and their EOS), is_long."""
        rng = np.random.default_rng([self.spec.seed, index])
        is_long = rng.random() >= self.spec.short_fraction
        L = self.spec.length
        ids, pos, lab = (np.empty(L, np.int64) for _ in range(3))
        answers = np.zeros(L, dtype=bool)
        filled = 0
        while filled < L:
            if self.spec.needle_fraction and rng.random() < self.spec.needle_fraction:
                n = self._needle_document(rng, L - filled if is_long else min(L - filled, self.spec.original_length),
                                          is_long, filled, ids, pos, lab, answers)
                if n:
                    filled += n
                    continue
                # too little room left for a needle sample: text fills it
            if is_long:
                doc = self.c[int(rng.choice(self.long_docs))]
                take = min(L - filled - 1, len(doc))
                start = int(rng.integers(0, len(doc) - take + 1))
                piece = doc[start : start + take]
                p0 = filled  # continuous positions over the whole row
            else:
                doc = self.c[int(rng.choice(self.any_docs))]
                want = min(len(doc), self.spec.original_length - 1, L - filled - 1)
                start = int(rng.integers(0, len(doc) - want + 1))
                piece = doc[start : start + want]
                p0 = 0  # positions restart per document
            n = len(piece) + 1
            ids[filled : filled + n] = np.concatenate([[self.bos], piece])
            pos[filled : filled + n] = np.arange(p0, p0 + n) if not is_long else np.arange(filled, filled + n)
            lab[filled : filled + n] = ids[filled : filled + n]
            if not is_long or filled > 0:
                lab[filled] = IGNORE_INDEX  # never predict a document's BOS from the previous document
            filled += n
        return {"input_ids": ids, "position_ids": pos, "labels": lab, "answers": answers, "is_long": np.bool_(is_long)}

    def _needle_document(self, rng, room: int, is_long: bool, at: int, ids, pos, lab, answers) -> int:
        """Write a needle sample (ending with EOS) of ``room`` (long rows) or half-to-all of ``room`` tokens at ``at``; returns
        its length, 0 when it does not fit the template."""
        n = room if is_long else int(rng.integers(room // 2, room + 1))
        self.needles.rng.seed(int(rng.integers(2**63)))
        try:  # the answer ends with EOS, as in pretraining: the model keeps stopping after its answer
            sample = self.needles.sample(n - 1, int(rng.integers(1, 3)))
        except ConfigError:
            return 0
        ids[at : at + n] = np.append(sample.input_ids, self.needles.tok.eos_token_id)
        pos[at : at + n] = np.arange(at, at + n) if is_long else np.arange(n)
        lab[at : at + n] = ids[at : at + n]
        lab[at] = IGNORE_INDEX  # its BOS
        answers[at : at + n - 1] = sample.labels != IGNORE_INDEX
        answers[at + n - 1] = True  # the EOS after the answer
        return n

    def batch(self, indices) -> dict[str, torch.Tensor]:
        rows = [self.row(int(i)) for i in indices]
        return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in ("input_ids", "position_ids", "labels", "answers", "is_long")}
