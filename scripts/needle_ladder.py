"""Where a base loses the key match between the recall rows it learned and the needles it fails: the same
choice (which of N values the model finds most likely after the asked key, ``scoring.needle_choice``) in
formats that step from associative recall to the retrieval check's needles one change at a time.

    .venv/bin/python scripts/needle_ladder.py results/probe-mkrecall-mixed-1234 [--pairs 4] [--samples 200]

Rungs (each drawn from its own seed, the needles' key words unless said; chance 1/N):
  1. recall, keys of 3 tokens of the warm-up's 8-token alphabet, one-token values (the warm-up's rows)
  2. recall, word keys, one-token values: "<key> is:<v>" ... "<key> mentioned in the provided text is<v>"
  3. recall, word keys, 7-digit values (" 1234567": a space, then the digits)
  4. recall pairs, asked with the needle question
  5. needle sentences and the needle question, no haystack
  6. needles in code at L0 (the retrieval check's samples)
Prints one line per rung (share choosing the asked value, Wilson 95% interval) and writes ``--out`` JSON.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longrope2 import models, scoring, stats
from longrope2.config import load as load_config
from longrope2.corpus import TokenizedCorpus
from longrope2.needles import NeedleBuilder

QUERY = " mentioned in the provided text is"


@dataclass
class Sample:
    input_ids: np.ndarray
    answer_len: int
    answers: tuple  # every pair's value tokens, in text order
    asked: int

    @property
    def prompt(self) -> np.ndarray:
        return self.input_ids[: len(self.input_ids) - self.answer_len]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="an experiment's results folder (base_model/model, corpus)")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--length", type=int, default=512, help="the needles-in-code rung's length (L0)")
    ap.add_argument("--out", type=Path, help="JSON of the rungs (default: <run>/base_model/needle_ladder-<pairs>.json)")
    args = ap.parse_args()
    model, tok = models.load_pretrained(args.run / "base_model" / "model")
    template = load_config([Path(__file__).resolve().parents[1] / "config" / "config.yaml"])["needles"]["template"]
    b = NeedleBuilder(TokenizedCorpus(args.run / "corpus", "test"), tok, template, seed=99)
    r = random.Random()
    enc, n, k = b.encode, args.samples, args.pairs

    def key_ids(key) -> list[int]:
        return list(key) if isinstance(key, tuple) else enc(" " + key)

    def rung(pair, query, value, answer, alphabet: bool = False) -> list[Sample]:
        r.seed(7)  # every rung its own draws
        out = []
        for _ in range(n):
            keys = r.sample(b.keys, k)
            if alphabet:
                keys = r.sample([(x, y, z) for x in range(4, 12) for y in range(4, 12) for z in range(4, 12)], k)
            vals = [value() for _ in keys]
            asked = r.randrange(k)
            ids = [b.bos] + (b.preamble if pair is needle else [])
            for key, v in zip(keys, vals):
                ids += pair(key, v)
            ans = answer(vals[asked])
            ids += query(keys[asked]) + ans
            out.append(Sample(np.asarray(ids, dtype=np.int64), len(ans), tuple(tuple(answer(v)) for v in vals), asked))
        return out

    def recall_pair(key, v) -> list[int]:
        return key_ids(key) + enc(" is:") + (enc(" " + v) if isinstance(v, str) else [v])

    def recall_query(key) -> list[int]:
        return key_ids(key) + enc(QUERY)

    def needle(key, v) -> list[int]:
        return enc(b.t["needle"].format(key=key, value=v))

    def question(key) -> list[int]:
        return enc(b.t["question"].format(key=key))

    def digits() -> str:
        return "".join(r.choice("0123456789") for _ in range(7))

    def token() -> int:
        return r.randrange(4, len(tok))

    def one(v) -> list[int]:
        return [v]

    def spaced(v) -> list[int]:
        return enc(" " + v)

    rungs = {
        "recall, alphabet keys, one-token values (the warm-up's rows)": rung(recall_pair, recall_query, token, one, True),
        "recall, word keys, one-token values": rung(recall_pair, recall_query, token, one),
        "recall, word keys, 7-digit values": rung(recall_pair, recall_query, digits, spaced),
        "recall pairs, the needle question": rung(recall_pair, question, digits, spaced),
        "needle sentences, the needle question, no haystack": rung(needle, question, digits, spaced),
        f"needles in code at {args.length} (the retrieval check)": b.draw(args.length, k, n),
    }
    result = {"run": str(args.run), "pairs": k, "samples": n, "rungs": {}}
    for name, samples in rungs.items():
        chosen = scoring.needle_choice(model, samples, 8192)
        w = stats.wilson(int(sum(int(c == s.asked) for c, s in zip(chosen, samples))), n)
        tokens = int(np.mean([len(s.input_ids) for s in samples]))
        result["rungs"][name] = {"asked": w.estimate, "lo": w.lo, "hi": w.hi, "mean_tokens": tokens}
        print(f"{name}: {w.estimate:.3f} [{w.lo:.2f}, {w.hi:.2f}] (n = {n}, {tokens} tokens)", flush=True)
    out = args.out or args.run / "base_model" / f"needle_ladder-{k}.json"
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
