"""RULER's 13 long-context tasks, generated offline and sized to each evaluation length.

The tasks follow NVIDIA RULER's generators (``scripts/data/synthetic``: niah, variable_tracking,
common_words_extraction, freq_words_extraction, qa), their arguments (``scripts/synthetic.yaml``) and their
wording, answer prefixes and generation budgets (``constants.py``). What differs, and why:

* The essay haystack is whatever text the caller passes (the experiment's held-out corpus, or a user's
  essays), whitespace-normalised and split into sentences by a regex: nltk's punkt model would need a
  download, and the Paul Graham essays are not redistributable.
* Every sample's haystack is sized by its own search on token counts summed from pre-tokenized pieces
  (words, noise sentences, distractor needles, numbered words, documents), then checked with one real
  tokenization. Prompt + ``max_new_tokens`` then fits the length as tightly as one piece allows; NVIDIA
  searches once per task and steps down in fixed increments.
* NIAH needle depths are spread evenly over [0, 1] across the samples, so that every depth is measured at
  every length (NVIDIA draws them at random), and each sample records its depth.

Prompts are for base models: the model reads ``input`` followed by ``gen_prefix`` (NVIDIA's answer prefix)
and continues it; no chat template. :func:`prompt_ids` is the one way a prompt is tokenized: exactly one
BOS when the tokenizer has one (as the repository's needle samples), then the text.
"""

from __future__ import annotations

import functools
import json
import math
import random
import re
import string
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import ConfigError
from ..hub import hub_or_cache, hub_reachable

# --------------------------------------------------------------------------------------------------
# NVIDIA's wording (scripts/data/synthetic/constants.py) and task arguments (scripts/synthetic.yaml)
# --------------------------------------------------------------------------------------------------

NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
    "ones that appear most often.\n{context}\nQuestion: What are the {num_cw} most common words in the above list?"
)
CWE_ANSWER_PREFIX = " Answer: The top {num_cw} words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"
QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other "
    "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
    "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}"
)
QA_ANSWER_PREFIX = " Answer:"
# The classic passkey test (Mohtashami & Jaggi, landmark-attention run_test.py; YaRN, LongLoRA and LongRoPE
# copy it): one line with a random key in the grass/sky/sun noise, and the question as the answer prefix.
PASSKEY_TEMPLATE = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz "
    "you about the important information there.\n{context}\n"
)
PASSKEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_ANSWER_PREFIX = "What is the pass key? The pass key is"
PASSKEY_MAX = 50000  # K = randint(1, 50000)

VT_HOPS = 4  # one chain of 5 variables
VT_EXAMPLE_TOKENS = 500  # NVIDIA sizes its one-shot example to 500 tokens
CWE_COMMON, CWE_REPEATS, CWE_SHOT = 10, (30, 3), (40, (10, 3))  # common words; repeats common/rare; one-shot
CWE_SHORT_REPEATS, CWE_SHORT_SHOT = (6, 1), (20, (3, 1))  # NVIDIA's settings below 4096 tokens
FWE_ALPHA, FWE_WORD_LEN, FWE_TOKENS_PER_WORD = 2.0, 6, 50  # Zipf exponent; coded word length; vocab = length/50
FWE_MIN_VOCAB = 10
ESSAY_SENTENCE_WORDS = 50  # text without sentence ends (code) is cut into runs of this many words


@dataclass(frozen=True)
class Task:
    """One RULER task: which generator, NVIDIA's wording, its complexity arguments and its scoring."""

    generator: str  # niah | variable_tracking | common_words_extraction | freq_words_extraction | qa
    template: str  # the input, with a {context} slot
    answer_prefix: str  # what the model continues (a sample's gen_prefix)
    max_new_tokens: int
    metric: str = "all"  # all: share of references found; part: 1 if any reference is found
    haystack: str | None = None  # niah: essay | noise | needle; variable_tracking: noise
    key_kind: str | None = None  # niah: words | numbers | uuids
    value_kind: str | None = None
    num_keys: int = 1  # niah: needles with distinct keys (the others are distractors unless queried)
    num_values: int = 1  # niah: values per key
    num_queries: int = 1  # niah: keys asked about
    qa_dataset: str | None = None  # qa: squad | hotpotqa


def _niah(haystack: str, key_kind: str, value_kind: str, keys: int = 1, values: int = 1, queries: int = 1) -> Task:
    return Task("niah", NIAH_TEMPLATE, NIAH_ANSWER_PREFIX, 128, "all", haystack, key_kind, value_kind,
                max(keys, queries), values, queries)


TASKS: dict[str, Task] = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", keys=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", values=4),
    "niah_multiquery": _niah("essay", "words", "numbers", queries=4),
    "vt": Task("variable_tracking", VT_TEMPLATE, VT_ANSWER_PREFIX, 30, haystack="noise"),
    "cwe": Task("common_words_extraction", CWE_TEMPLATE, CWE_ANSWER_PREFIX, 120),
    "fwe": Task("freq_words_extraction", FWE_TEMPLATE, FWE_ANSWER_PREFIX, 50),
    "qa_1": Task("qa", QA_TEMPLATE, QA_ANSWER_PREFIX, 32, metric="part", qa_dataset="squad"),
    "qa_2": Task("qa", QA_TEMPLATE, QA_ANSWER_PREFIX, 32, metric="part", qa_dataset="hotpotqa"),
}

#: Beyond RULER's 13: the needle heat map (niah_single_1's needle at fixed depths: pass ``depths`` to
#: :func:`generate`) and the passkey test (scored by its first integer, as the original).
EXTRA_TASKS: dict[str, Task] = {
    "niah_depth": TASKS["niah_single_1"],
    "passkey": Task("passkey", PASSKEY_TEMPLATE, PASSKEY_ANSWER_PREFIX, 16, metric="number", haystack="noise"),
}
ALL_TASKS: dict[str, Task] = {**TASKS, **EXTRA_TASKS}

# The QA sets NVIDIA's download script fetches, and their Hugging Face Hub copies (name, config, split).
QA_FILES = {
    "squad": "the SQuAD v2.0 dev set (dev-v2.0.json)",
    "hotpotqa": "the HotpotQA dev distractor set (hotpot_dev_distractor_v1.json)",
}
QA_HUB = {"squad": ("rajpurkar/squad_v2", None, "validation"), "hotpotqa": ("hotpotqa/hotpot_qa", "distractor", "validation")}


# --------------------------------------------------------------------------------------------------
# Token counting
# --------------------------------------------------------------------------------------------------


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt's token ids as the model sees them: one BOS (when the tokenizer has one), then the text.

    Prepending it here, rather than trusting ``add_special_tokens``, gives exactly one BOS both for
    tokenizers that add it themselves (Llama) and for those that do not (GPT-2 style, the scale model's).
    """
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return ids if tokenizer.bos_token_id is None else [tokenizer.bos_token_id, *ids]


class _Tokens:
    """Token counts of text pieces for one tokenizer, cached across tasks, lengths and samples."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos = 0 if tokenizer.bos_token_id is None else 1
        self._counts: dict[str, int] = {}
        sentences = _sentences(NOISE)
        # pieces shared by every sample: noise sentences (a paragraph per line), list numbers, document headers
        self.noise = _Pieces(self, lambda i: ("\n" if i % len(sentences) == 0 else " ") + sentences[i % len(sentences)])
        self.noise_paragraph = len(sentences)
        self.numbers = _Pieces(self, lambda i: f" {i + 1}.")
        self.doc_headers = _Pieces(self, lambda i: f"\n\nDocument {i + 1}:\n")

    def counts(self, pieces: Sequence[str]) -> list[int]:
        missing = [p for p in dict.fromkeys(pieces) if p not in self._counts]
        if missing:
            encoded = self.tokenizer(missing, add_special_tokens=False, verbose=False)["input_ids"]
            self._counts.update(zip(missing, map(len, encoded)))
        return [self._counts[p] for p in pieces]

    def count(self, text: str) -> int:
        """Tokens of one text, uncached (whole prompts are tokenized once each)."""
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def prompt(self, text: str) -> int:
        return self.bos + self.count(text)


@functools.lru_cache(maxsize=2)
def _shared_tokens(tokenizer) -> _Tokens:
    return _Tokens(tokenizer)


def _tokens_for(tokenizer) -> _Tokens:
    """The piece counts of this tokenizer, shared by consecutive calls (every task and length)."""
    try:
        return _shared_tokens(tokenizer)
    except TypeError:  # an unhashable tokenizer: counts are not shared
        return _Tokens(tokenizer)


class _Pieces:
    """A haystack as a stream of pieces (words, sentences, needles, documents) with running token counts.

    Each piece carries its separator in front (" word", "\\nsentence"), so the tokens of the first n pieces
    are a prefix sum: exact for byte-level BPE, whose pre-tokens never straddle such a boundary, and close
    for other tokenizers (every prompt is checked with a real tokenization anyway). ``piece_at(i)`` is
    called once per index, in order, so pieces drawn from a random generator stay deterministic.
    """

    def __init__(self, tokens: _Tokens, piece_at: Callable[[int], str], limit: int | None = None):
        self._tokens, self._piece_at, self.limit = tokens, piece_at, limit
        self.pieces: list[str] = []
        self._cumulative = [0]

    def _grow(self, n: int) -> None:
        if n <= len(self.pieces):
            return
        target = max(n, 2 * len(self.pieces), 64)
        if self.limit is not None:
            target = min(target, self.limit)
        new = [self._piece_at(i) for i in range(len(self.pieces), target)]
        total = self._cumulative[-1]
        for count in self._tokens.counts(new):
            total += count
            self._cumulative.append(total)
        self.pieces.extend(new)

    def tokens(self, n: int) -> int:
        self._grow(n)
        return self._cumulative[n]

    def take(self, n: int) -> list[str]:
        self._grow(n)
        return self.pieces[:n]


# --------------------------------------------------------------------------------------------------
# Sizing: the largest haystack whose prompt fits
# --------------------------------------------------------------------------------------------------


@dataclass
class _Draft:
    input: str
    gen_prefix: str
    outputs: list[str]
    depth: float | None = None

    @property
    def prompt(self) -> str:
        return self.input + self.gen_prefix


@dataclass
class _Problem:
    """One sample's content, waiting for its haystack size: ``build(n)`` is deterministic in n and
    ``estimate(n)`` (its prompt tokens from summed pieces) does not decrease with n."""

    build: Callable[[int], _Draft]
    estimate: Callable[[int], int]
    lo: int  # the smallest haystack the sample can have
    hi: int | None = None  # the largest (None: unbounded, the haystack repeats)


def _largest(fits: Callable[[int], bool], lo: int, hi: int | None) -> int | None:
    """Largest n in [lo, hi] with ``fits(n)``, for a ``fits`` that holds up to some n; None if not at lo."""
    if (hi is not None and hi < lo) or not fits(lo):
        return None
    if hi is not None and fits(hi):
        return hi
    good, bad = lo, hi
    if bad is None:  # unbounded: double until it no longer fits
        step = 1
        while fits(lo + step):
            step *= 2
        good, bad = lo + step // 2, lo + step
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def _fit(problem: _Problem, budget: int, measure: Callable[[str], int]) -> tuple[_Draft, int] | None:
    """The sample with the largest haystack whose real prompt has at most ``budget`` tokens, and that count.

    The search runs on the estimate; the real count of its answer corrects the estimate by a constant
    and, when that changes the answer, the search runs again (once, for byte-level BPE).
    """
    best: tuple[int, _Draft, int] | None = None
    measured: dict[int, int] = {}
    correction = 0
    for _ in range(6):
        n = _largest(lambda k: problem.estimate(k) + correction <= budget, problem.lo, problem.hi)
        if n is None:
            n = problem.lo  # the estimate may overcount: let the real count decide
        if n in measured:
            break
        draft = problem.build(n)
        real = measured[n] = measure(draft.prompt)
        error = real - problem.estimate(n)
        if real <= budget:
            if best is None or n > best[0]:
                best = (n, draft, real)
            if error >= correction:  # the estimate was not pessimistic: nothing larger fits
                break
            correction = error
        else:
            correction = max(error, correction + 1)
    if best is None and measured:  # far-off estimates: search on real counts below the smallest failure
        n = _largest(lambda k: measure(problem.build(k).prompt) <= budget, problem.lo, min(measured) - 1)
        if n is not None:
            draft = problem.build(n)
            best = (n, draft, measure(draft.prompt))
    return None if best is None else (best[1], best[2])


def _too_short(task: str, length: int, problem: _Problem, tokens: _Tokens, max_new: int) -> ConfigError:
    """The smallest haystack's need, rounded up with slack: keys and values are drawn anew at each length."""
    need = tokens.prompt(problem.build(problem.lo).prompt) + max_new
    suggest = ((need + 32) // 64 + 1) * 64
    return ConfigError(
        "evaluation.lengths",
        f"{length} is too short for RULER task {task}: its shortest prompt plus {max_new} "
        f"generated tokens takes {need} tokens; use lengths of at least {suggest}",
    )


# --------------------------------------------------------------------------------------------------
# Shared helpers: text, words, placement
# --------------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(text: str, max_words: int = ESSAY_SENTENCE_WORDS) -> list[str]:
    """Sentences of whitespace-normalised text; runs without a sentence end are cut every ``max_words``."""
    out = []
    for sentence in _SENTENCE_END.split(text.strip()):
        words = sentence.split()
        out.extend(" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words))
    return out


@functools.lru_cache(maxsize=2)
def _essay_words(haystack: str) -> tuple[str, ...]:
    return tuple(haystack.split())


@functools.lru_cache(maxsize=None)
def _word_list(name: str) -> tuple[str, ...]:
    """One of wonderwords' word lists (nounlist, adjectivelist, verblist), the ones NVIDIA samples from."""
    import wonderwords

    path = Path(wonderwords.__file__).parent / "assets" / f"{name}.txt"
    words = (w.strip() for w in path.read_text(encoding="utf-8").splitlines())
    return tuple(sorted({w for w in words if w and not any(c.isspace() for c in w)}))


@functools.lru_cache(maxsize=1)
def _cwe_vocabulary() -> tuple[str, ...]:
    return tuple(sorted(set(_word_list("nounlist")) | set(_word_list("adjectivelist")) | set(_word_list("verblist"))))


def random_needle(kind: str, rng: random.Random) -> str:
    """A key or value of NVIDIA's kinds: adjective-noun words, 7-digit numbers, or UUID4s."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return f"{rng.choice(_word_list('adjectivelist'))}-{rng.choice(_word_list('nounlist'))}"


def _distinct(draw: Callable[[], str], k: int, avoid: Iterable[str] = ()) -> list[str]:
    taken, out = set(avoid), []
    while len(out) < k:
        value = draw()
        if value not in taken:
            taken.add(value)
            out.append(value)
    return out


def _split(template: str, **fields) -> tuple[str, str]:
    """The text before and after a template's {context} slot, with its other fields filled in."""
    head, tail = template.split("{context}")
    return head.format(**fields), tail.format(**fields)


def _place(pieces: Sequence[str], inserts: Sequence[tuple[float, str]], stride: int = 1) -> tuple[str, float]:
    """Join haystack pieces with texts inserted at fractional depths; only every ``stride``-th boundary is
    a slot (noise: between paragraphs). Returns the text and the first insert's actual depth."""
    slots = -(-len(pieces) // stride)
    positions = [round(depth * slots) for depth, _ in inserts]
    at: dict[int, list[str]] = {}
    for position, (_, text) in sorted(zip(positions, inserts), key=lambda x: x[0]):
        at.setdefault(min(position * stride, len(pieces)), []).append(text)
    out = []
    for i, piece in enumerate(pieces):
        out.extend(at.pop(i, ()))
        out.append(piece)
    for texts in at.values():
        out.extend(texts)
    depth = positions[0] / slots if slots else inserts[0][0]
    return "".join(out).lstrip(), depth


def _spread(n: int) -> list[float]:
    """n depths evenly over [0, 1] (the middle for one sample)."""
    return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]


def _lazy_shuffle(rng: random.Random, n: int) -> Iterator[int]:
    """range(n) in random order, drawing only as many as are consumed (sparse Fisher-Yates)."""
    moved: dict[int, int] = {}
    for i in range(n):
        j = rng.randrange(i, n)
        yield moved.get(j, j)
        moved[j] = moved.get(i, i)


# --------------------------------------------------------------------------------------------------
# The generators
# --------------------------------------------------------------------------------------------------


def _niah_problem(spec: Task, tokens: _Tokens, rng: random.Random, depth: float, length: int,
                  essay: _Pieces | None) -> _Problem:
    """Needles "One of the special magic {values} for {key} is: {value}." in a haystack; the first
    queried needle sits at ``depth``, the others at random depths."""
    keys = _distinct(lambda: random_needle(spec.key_kind, rng), spec.num_keys)
    values = _distinct(lambda: random_needle(spec.value_kind, rng), spec.num_keys * spec.num_values)
    values_of = [values[i * spec.num_values : (i + 1) * spec.num_values] for i in range(spec.num_keys)]
    queried = rng.sample(range(spec.num_keys), spec.num_queries)
    answers = [value for i in queried for value in values_of[i]]

    def needle(i: int, value: str) -> str:
        return NEEDLE.format(type_needle_v=spec.value_kind, key=keys[i], value=value)

    target = (queried[0], values_of[queried[0]][0])
    needles = [(depth, needle(*target))] + [
        (rng.random(), needle(i, value)) for i in range(spec.num_keys) for value in values_of[i] if (i, value) != target
    ]

    query = keys[queried[0]] if len(queried) == 1 else ", ".join(keys[i] for i in queried[:-1]) + ", and " + keys[queried[-1]]
    template, prefix, noun = spec.template, spec.answer_prefix, spec.value_kind
    if spec.num_queries * spec.num_values == 1:  # NVIDIA words a single answer in the singular
        template, prefix, noun = _singular(template), _singular(prefix), noun[:-1]
    head, tail = _split(template, type_needle_v=noun, query=query)
    prefix = prefix.format(type_needle_v=noun, query=query)

    separator, stride = "\n", 1
    if spec.haystack == "essay":
        separator, haystack = " ", essay
    elif spec.haystack == "noise":
        haystack, stride = tokens.noise, tokens.noise_paragraph
    else:  # distractor needles with other keys
        distractor_rng = random.Random(rng.getrandbits(64))
        real_keys = set(keys)

        def distractor(_: int) -> str:
            key = _distinct(lambda: random_needle(spec.key_kind, distractor_rng), 1, real_keys)[0]
            value = random_needle(spec.value_kind, distractor_rng)
            return "\n" + NEEDLE.format(type_needle_v=spec.value_kind, key=key, value=value)

        haystack = _Pieces(tokens, distractor)

    inserts = [(d, separator + text) for d, text in needles]
    fixed = tokens.bos + sum(tokens.counts([head, tail + prefix] + [text for _, text in inserts]))

    def build(n: int) -> _Draft:
        pieces = haystack.take(n)
        if spec.haystack == "essay":  # needles go between sentences of the first n words
            pieces = [" " + s for s in _sentences("".join(pieces))]
        context, actual_depth = _place(pieces, inserts, stride)
        return _Draft(head + context + tail, prefix, answers, actual_depth)

    return _Problem(build, lambda n: fixed + haystack.tokens(n), lo=0)


def _singular(text: str) -> str:
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


def _vt_chain(tokens: _Tokens, rng: random.Random, letters: int, lead: str = "", bos: int = 0) -> _Problem:
    """One chain "VAR A = 12345", "VAR B = VAR A", ... hidden in order in the noise haystack, and the
    question about its value; ``lead`` (the one-shot example) comes first."""
    names = _distinct(lambda: "".join(rng.choices(string.ascii_uppercase, k=letters)), VT_HOPS + 1)
    value = str(rng.randint(10000, 99999))
    lines = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(VT_HOPS)]
    inserts = [(d, "\n" + line) for d, line in zip(sorted(rng.random() for _ in lines), lines)]
    head, tail = _split(VT_TEMPLATE, query=value)
    head = lead + head
    prefix = VT_ANSWER_PREFIX.format(num_v=len(names), query=value)
    fixed = bos + sum(tokens.counts([head, tail + prefix] + [text for _, text in inserts]))

    def build(n: int) -> _Draft:
        context, _ = _place(tokens.noise.take(n), inserts, tokens.noise_paragraph)
        return _Draft(head + context + tail, prefix, names)

    return _Problem(build, lambda n: fixed + tokens.noise.tokens(n), lo=0)


def _vt_problem(spec: Task, tokens: _Tokens, rng: random.Random, depth: float, length: int,
                essay: _Pieces | None) -> _Problem:
    """Variable tracking after a one-shot example with 3-letter names, as NVIDIA's (the example is sized
    to 500 tokens, less at short lengths)."""
    shot = _vt_chain(tokens, rng, letters=3)
    fitted = _fit(shot, min(VT_EXAMPLE_TOKENS, length // 8), tokens.count)
    example = fitted[0] if fitted else shot.build(0)
    return _vt_chain(tokens, rng, letters=5, lead=example.prompt + " ".join(example.outputs) + "\n\n", bos=tokens.bos)


def _numbered(words: Sequence[str]) -> str:
    return " ".join(f"{i}. {w}" for i, w in enumerate(words, 1))


def _cwe_list(words: Sequence[str], repeats: tuple[int, int], rng: random.Random) -> tuple[str, list[str]]:
    """NVIDIA's numbered list: the first CWE_COMMON words repeated often, the rest rarely, shuffled."""
    common = list(words[:CWE_COMMON])
    listing = common * repeats[0] + list(words[CWE_COMMON:]) * repeats[1]
    rng.shuffle(listing)
    return _numbered(listing), common


def _cwe_problem(spec: Task, tokens: _Tokens, rng: random.Random, depth: float, length: int,
                 essay: _Pieces | None) -> _Problem:
    """Common words extraction, after a one-shot example; the search is over the number of rare words."""
    vocabulary = _cwe_vocabulary()
    order = rng.sample(vocabulary, len(vocabulary))
    repeats, (shot_words, shot_repeats) = (CWE_SHORT_REPEATS, CWE_SHORT_SHOT) if length < 4096 else (CWE_REPEATS, CWE_SHOT)
    head, tail = _split(spec.template, num_cw=CWE_COMMON)
    prefix = spec.answer_prefix.format(num_cw=CWE_COMMON)
    shot_context, shot_common = _cwe_list(order[:shot_words], shot_repeats, random.Random(rng.getrandbits(64)))
    head = head + shot_context + tail + prefix + " " + _numbered(shot_common) + "\n" + head

    def word_at(i: int) -> str:  # past wonderwords' lists (very long lengths): adjective+noun compounds
        i += shot_words
        if i < len(order):
            return " " + order[i]
        adjectives, nouns = _word_list("adjectivelist"), _word_list("nounlist")
        j = i - len(order)
        return f" {adjectives[j % len(adjectives)]}{nouns[(j // len(adjectives)) % len(nouns)]}"

    words = _Pieces(tokens, word_at)
    fixed = tokens.bos + sum(tokens.counts([head, tail + prefix]))
    shuffle_seed = rng.getrandbits(64)

    def estimate(n: int) -> int:
        entries = CWE_COMMON * repeats[0] + (n - CWE_COMMON) * repeats[1]
        common = words.tokens(CWE_COMMON)
        return fixed + tokens.numbers.tokens(entries) + repeats[0] * common + repeats[1] * (words.tokens(n) - common)

    def build(n: int) -> _Draft:
        context, common = _cwe_list([w[1:] for w in words.take(n)], repeats, random.Random(shuffle_seed))
        return _Draft(head + context + tail, prefix, common)

    return _Problem(build, estimate, lo=CWE_COMMON)


def _zeta(alpha: float, terms: int = 1000) -> float:
    """Riemann zeta (alpha > 1): a partial sum plus its Euler-Maclaurin tail."""
    return math.fsum(k**-alpha for k in range(1, terms + 1)) + terms ** (1 - alpha) / (alpha - 1) - terms**-alpha / 2


def _fwe_problem(spec: Task, tokens: _Tokens, rng: random.Random, depth: float, length: int,
                 essay: _Pieces | None) -> _Problem:
    """Frequent words extraction: random coded words with Zipf counts; the most frequent is '...' noise and
    the answer is the next three. The search is over the total number of words."""
    size = max(FWE_MIN_VOCAB, length // FWE_TOKENS_PER_WORD)
    vocabulary = sorted(set(_distinct(lambda: "".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LEN)), size)))
    rng.shuffle(vocabulary)
    vocabulary[0] = "..."
    zeta = _zeta(FWE_ALPHA)
    shares = [k**-FWE_ALPHA / zeta for k in range(1, size + 1)]
    word_tokens = tokens.counts([" " + w for w in vocabulary])
    head, tail = _split(spec.template)
    prefix = spec.answer_prefix
    fixed = tokens.bos + sum(tokens.counts([head, tail + prefix]))
    shuffle_seed = rng.getrandbits(64)

    def counts(total: int) -> list[int]:
        return [int(total * share) for share in shares]

    def build(total: int) -> _Draft:
        words = [w for w, c in zip(vocabulary, counts(total)) for _ in range(c)]
        random.Random(shuffle_seed).shuffle(words)
        return _Draft(head + " ".join(words) + tail, prefix, vocabulary[1:4])

    # fewest words for which ranks 2..5 have strictly decreasing counts (the answer is well defined)
    gap = min(k**-FWE_ALPHA - (k + 1) ** -FWE_ALPHA for k in range(2, 5))
    lo = math.ceil(zeta / gap)
    return _Problem(build, lambda total: fixed + sum(c * t for c, t in zip(counts(total), word_tokens)), lo)


def _passkey_problem(spec: Task, tokens: _Tokens, rng: random.Random, depth: float, length: int,
                     essay: _Pieces | None) -> _Problem:
    """The pass key line at ``depth`` between noise paragraphs; the search is over the noise sentences."""
    key = str(rng.randint(1, PASSKEY_MAX))
    inserts = [(depth, "\n" + PASSKEY_LINE.format(key=key))]
    head, tail = _split(spec.template)
    fixed = tokens.bos + sum(tokens.counts([head, tail + spec.answer_prefix, inserts[0][1]]))

    def build(n: int) -> _Draft:
        context, actual_depth = _place(tokens.noise.take(n), inserts, tokens.noise_paragraph)
        return _Draft(head + context + tail, spec.answer_prefix, [key], actual_depth)

    return _Problem(build, lambda n: fixed + tokens.noise.tokens(n), lo=0)


def _qa_problem(record: dict, pool: Sequence[str], index_of: dict[str, int], tokens: _Tokens,
                rng: random.Random) -> _Problem:
    """A question with its gold documents, then the other documents of its article (SQuAD) or its
    distractor paragraphs (HotpotQA), then random documents of the set, shuffled as "Document i:"."""
    gold = list(dict.fromkeys(record["gold_docs"]))
    related = [d for d in dict.fromkeys(record["related_docs"]) if d not in gold]
    rng.shuffle(related)
    first = gold + related
    taken = {index_of[d] for d in first}
    others = (pool[i] for i in _lazy_shuffle(random.Random(rng.getrandbits(64)), len(pool)) if i not in taken)
    documents = _Pieces(tokens, lambda i: first[i] if i < len(first) else next(others), limit=len(pool))
    head, tail = _split(QA_TEMPLATE, query=record["question"])
    fixed = tokens.bos + sum(tokens.counts([head, tail + QA_ANSWER_PREFIX]))
    shuffle_seed = rng.getrandbits(64)

    def build(n: int) -> _Draft:
        chosen = documents.take(n)
        random.Random(shuffle_seed).shuffle(chosen)
        context = "\n\n".join(f"Document {i}:\n{d}" for i, d in enumerate(chosen, 1))
        return _Draft(head + context + tail, QA_ANSWER_PREFIX, list(record["answers"]))

    return _Problem(build, lambda n: fixed + tokens.doc_headers.tokens(n) + documents.tokens(n), len(gold), len(pool))


_PROBLEMS = {
    "niah": _niah_problem,
    "variable_tracking": _vt_problem,
    "common_words_extraction": _cwe_problem,
    "freq_words_extraction": _fwe_problem,
    "passkey": _passkey_problem,
}


def generate(task: str, length: int, n: int, tokenizer, haystack: str, seed: int,
             qa_data: list | None = None, depths: Sequence[float] | None = None,
             max_new_tokens: int | None = None) -> list[dict]:
    """``n`` samples of one RULER task whose prompt (:func:`prompt_ids` of input + gen_prefix) plus
    ``max_new_tokens`` fits in ``length`` tokens, as close to it as the haystack's pieces allow.

    ``haystack``: plain text for the essay tasks (niah_single_2/3, multikey_1, multivalue, multiquery),
    repeated when too short. ``qa_data``: :func:`load_qa`'s records for qa_1/qa_2 (loaded from the Hub when
    None). ``depths``: the needle depth of each sample (then ``n`` is ``len(depths)``; the heat map's grid),
    else ``n`` depths spread evenly over [0, 1]. ``max_new_tokens`` replaces NVIDIA's answer budget (windows
    too small for it). The same (task, length, seed) always gives the same samples.
    """
    if task not in ALL_TASKS:
        raise ConfigError("evaluation.ruler.tasks", f"unknown RULER task {task!r}; allowed: {', '.join(ALL_TASKS)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError("evaluation.lengths", f"must be positive integers (tokens), got {length!r}")
    spec = ALL_TASKS[task]
    if max_new_tokens is not None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError("evaluation.ruler.max_new_tokens", f"must be positive integers, got {max_new_tokens!r}")
        spec = replace(spec, max_new_tokens=max_new_tokens)
    if depths is not None:
        depths = [float(d) for d in depths]
        if not depths or any(not 0.0 <= d <= 1.0 for d in depths) or spec.generator == "qa":
            raise ConfigError("evaluation.niah.depths", f"needs depths in [0, 1] for a needle task, got {depths!r} for {task}")
        n = len(depths)
    tokens = _tokens_for(tokenizer)
    budget = length - spec.max_new_tokens
    base = f"ruler/{task}/{length}/{seed}"

    def record(index: int, draft: _Draft, prompt_tokens: int) -> dict:
        return {
            "index": index, "task": task, "length": length, "input": draft.input, "gen_prefix": draft.gen_prefix,
            "outputs": list(draft.outputs), "max_new_tokens": spec.max_new_tokens, "metric": spec.metric,
            "prompt_tokens": prompt_tokens, "depth": draft.depth,
        }

    if spec.generator == "qa":
        return [record(i, *fitted) for i, fitted in enumerate(_qa_samples(task, spec, length, n, tokens, budget, seed, qa_data))]

    essay = None
    if spec.haystack == "essay":
        words = _essay_words(haystack or "")
        if not words:
            raise ConfigError(
                "evaluation.ruler.haystack",
                f"is empty, and RULER task {task} hides its needles in essay text; pass the held-out corpus "
                "text or a folder of plain-text essays",
            )
        essay = _Pieces(tokens, lambda i: " " + words[i % len(words)])
    samples = []
    for index, depth in enumerate(depths if depths is not None else _spread(n)):
        rng = random.Random(f"{base}/{index}")
        problem = _PROBLEMS[spec.generator](spec, tokens, rng, depth, length, essay)
        fitted = _fit(problem, budget, tokens.prompt)
        if fitted is None:
            raise _too_short(task, length, problem, tokens, spec.max_new_tokens)
        samples.append(record(index, *fitted))
    return samples


def answer_text(task: str, outputs: Sequence[str]) -> str:
    """What a model that solves a sample writes after its gen_prefix, in the form NVIDIA's one-shot examples
    use (variable tracking: names after "they are: "; common words: a numbered list); the training target
    of the scale model's RULER-format pretraining. Scoring never needs it: it looks for each reference."""
    spec = ALL_TASKS[task]
    if spec.generator == "variable_tracking":
        return " ".join(outputs)
    if spec.generator == "common_words_extraction":
        return " " + _numbered(outputs)
    if spec.generator == "freq_words_extraction":
        return " " + " ".join(outputs)
    return " " + ", ".join(outputs)


def _qa_samples(task: str, spec: Task, length: int, n: int, tokens: _Tokens, budget: int, seed: int,
                qa_data: list | None) -> Iterator[tuple[_Draft, int]]:
    """QA samples over the questions in a seeded order (the same at every length, so lengths compare the
    same questions); a question whose gold documents alone overflow the length is skipped."""
    if qa_data is None:
        qa_data = load_qa(spec.qa_dataset, None)
    if not qa_data:
        raise ConfigError(f"evaluation.ruler.qa_files.{spec.qa_dataset}", "holds no answerable questions")
    pool = sorted({d for r in qa_data for d in (*r["gold_docs"], *r["related_docs"])})
    index_of = {d: i for i, d in enumerate(pool)}

    def question_order() -> Iterator[int]:
        for epoch in range(n + 1):  # more samples than questions: go round again in a new order
            yield from _lazy_shuffle(random.Random(f"ruler/{task}/{seed}/questions/{epoch}"), len(qa_data))

    order = question_order()
    for index in range(n):
        rng = random.Random(f"ruler/{task}/{length}/{seed}/{index}")
        for _ in range(len(qa_data)):
            problem = _qa_problem(qa_data[next(order)], pool, index_of, tokens, rng)
            fitted = _fit(problem, budget, tokens.prompt)
            if fitted is not None:
                yield fitted
                break
        else:
            raise _too_short(task, length, problem, tokens, spec.max_new_tokens)


# --------------------------------------------------------------------------------------------------
# QA data: SQuAD v2 dev and HotpotQA dev (distractor), from local files or the Hugging Face Hub
# --------------------------------------------------------------------------------------------------


def _qa_record(question: str, answers: Iterable[str], gold_docs: list[str], related_docs: list[str]) -> dict | None:
    answers = list(dict.fromkeys(a.strip() for a in answers if a and a.strip()))
    if not answers:
        return None
    return {"question": question.strip(), "answers": answers, "gold_docs": gold_docs, "related_docs": related_docs}


def _squad(articles: Iterable[tuple[str, list[str], Iterable[tuple[str, str, list[str], bool]]]]) -> list[dict]:
    """Answerable questions; the article's other paragraphs are its related documents (NVIDIA's
    "more_context"). ``articles``: (title, paragraphs, (question, paragraph, answers, impossible)...)."""
    out = []
    for _, paragraphs, questions in articles:
        for question, paragraph, answers, impossible in questions:
            rec = None if impossible else _qa_record(question, answers, [paragraph], [p for p in paragraphs if p != paragraph])
            if rec:
                out.append(rec)
    return out


def _squad_json(data: dict) -> list[dict]:
    articles = []
    for article in data["data"]:
        paragraphs = [p["context"] for p in article["paragraphs"]]
        questions = [(qa["question"], p["context"], [a["text"] for a in qa["answers"]], bool(qa.get("is_impossible")))
                     for p in article["paragraphs"] for qa in p["qas"]]
        articles.append((article.get("title", ""), paragraphs, questions))
    return _squad(articles)


def _squad_rows(rows) -> list[dict]:
    paragraphs: dict[str, dict[str, None]] = {}
    questions: dict[str, list] = {}
    for r in rows:
        paragraphs.setdefault(r["title"], {})[r["context"]] = None
        questions.setdefault(r["title"], []).append((r["question"], r["context"], r["answers"]["text"], False))
    return _squad((t, list(paragraphs[t]), questions[t]) for t in paragraphs)


def _hotpot(question: str, answer: str, titles: list[str], sentences: list[list[str]], support: Iterable[str]) -> dict | None:
    """Documents "title\\nparagraph" as NVIDIA's; the supporting paragraphs are gold, the question's
    distractor paragraphs related (so all ten come first whenever they fit)."""
    support = set(support)
    docs = [f"{t}\n{''.join(s)}" for t, s in zip(titles, sentences)]
    gold = [d for d, t in zip(docs, titles) if t in support] or docs
    return _qa_record(question, [answer], gold, [d for d in docs if d not in gold])


def _hotpot_json(data: list) -> list[dict]:
    out = (_hotpot(q["question"], q["answer"], [t for t, _ in q["context"]], [s for _, s in q["context"]],
                   [t for t, _ in q["supporting_facts"]]) for q in data)
    return [r for r in out if r]


def _hotpot_rows(rows) -> list[dict]:
    out = (_hotpot(r["question"], r["answer"], r["context"]["title"], r["context"]["sentences"],
                   r["supporting_facts"]["title"]) for r in rows)
    return [r for r in out if r]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of a tokenizer's vocabulary and special tokens: data sized with one tokenizer is only
    valid for models that share it."""
    import hashlib

    vocab = sorted(tokenizer.get_vocab().items())
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id]
    return hashlib.sha256(json.dumps([vocab, special], ensure_ascii=False).encode()).hexdigest()[:16]


def load_qa(kind: str, path: str | None = None) -> list[dict]:
    """QA records ``{"question", "answers", "gold_docs", "related_docs"}`` of SQuAD v2 dev (answerable
    questions only) or HotpotQA dev distractor: from ``path`` (the JSON files NVIDIA's download script
    fetches), else from the Hugging Face Hub (or its local cache)."""
    if kind not in QA_FILES:
        raise ConfigError("evaluation.ruler.qa_files", f"unknown QA set {kind!r}; allowed: {', '.join(QA_FILES)}")
    key = f"evaluation.ruler.qa_files.{kind}"
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(key, f"{path} is not a file; give the path of {QA_FILES[kind]}")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            records = _squad_json(data) if kind == "squad" else _hotpot_json(data)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ConfigError(key, f"{path} is not {QA_FILES[kind]} ({type(e).__name__}: {str(e)[:120]})".replace("\n", " ")) from None
        source = str(path)
    else:
        name, config, split = QA_HUB[kind]
        try:
            import datasets

            with hub_or_cache():
                rows = datasets.load_dataset(name, config, split=split)
        except Exception as e:  # offline, missing cache, network or auth: all end the same way for the user
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            if not hub_reachable(timeout=1.0):
                reason = "the Hub is unreachable and the datasets cache holds no copy"
            raise ConfigError(
                key,
                f"no local file is set and the Hub copy {name} could not be loaded ({reason}); download "
                f"{QA_FILES[kind]} and set {key} to its path",
            ) from None
        records = _squad_rows(rows) if kind == "squad" else _hotpot_rows(rows)
        source = name
    if not records:
        raise ConfigError(key, f"{source} holds no answerable questions")
    return records
