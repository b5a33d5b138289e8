"""The toy world: a small family of digit tasks with a hidden, checkable reward.

A prompt names a task, a start digit and a response length, ``"up 3 6 :"``; a response is that many
digits, ``"4 6 5 8 9 9"`` (lengths ``MIN_LEN`` to ``MAX_LEN``, so sequences in a batch differ in length,
as real preference data do). Each task scores a response in [0, 1] by a rule the model never sees:

- ``up d``: the fraction of the steps d→r1, r1→r2, ... that go strictly up;
- ``down d``: the fraction that go strictly down;
- ``near d``: the fraction of response digits within 1 of d;
- ``odd d``: the fraction of response digits whose parity differs from d's.

Responses that are too short, too long or hold a non-digit score 0 on every position they get wrong.
A prompt without a length, ``"up 3 :"``, asks for ``DEFAULT_LEN`` digits.
The SFT data mix a "good" and a "bad" mode half and half (each digit follows, or breaks, the rule
with probability 0.9), so a model warmed up on them has learned the task format and to follow the
prompt, but has no preference between good and bad: its held-out preference accuracy is at chance.
Preference pairs are the best and worst of ``k`` responses from that same mixture, labelled by the
hidden reward (ties redrawn). Everything is generated from a seed: no files, no downloads.

The tokenizer is a fixed word-level vocabulary (``tokenizers`` WordLevel) that splits on whitespace,
punctuation and single digits, so prompt and completion tokenize the same way joined or apart.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prefkit.data.records import Pair

MIN_LEN = 2
"""Shortest response length a prompt asks for."""
MAX_LEN = 9
"""Longest response length a prompt asks for (one digit token in the prompt)."""
DEFAULT_LEN = 4
"""Length asked by a prompt written without one (``"up 3 :"``)."""

DIGITS = tuple(str(d) for d in range(10))
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")


def _up(start: int, prev: int, digit: int) -> bool:
    return digit > prev


def _down(start: int, prev: int, digit: int) -> bool:
    return digit < prev


def _near(start: int, prev: int, digit: int) -> bool:
    return abs(digit - start) <= 1


def _odd(start: int, prev: int, digit: int) -> bool:
    return digit % 2 != start % 2


# task name -> hidden rule: is ``digit`` a good next digit, given the start digit and the previous
# digit (the start digit for the first)? The reward is the fraction of good positions.
TASKS: dict[str, Callable[[int, int, int], bool]] = {
    "up": _up,
    "down": _down,
    "near": _near,
    "odd": _odd,
}


@dataclass(frozen=True)
class Prompt:
    """One toy prompt: a task name, a start digit and the response length asked for."""

    task: str
    start: int
    length: int = DEFAULT_LEN

    @property
    def text(self) -> str:
        return f"{self.task} {self.start} {self.length} :"


def parse_prompt(text: str) -> Prompt:
    """The inverse of ``Prompt.text``."""
    words = text.split()
    if len(words) == 3:
        words.insert(2, str(DEFAULT_LEN))
    if len(words) != 4:
        raise ValueError(f"not a toy prompt: {text!r}")
    task, start, length, colon = words
    if task not in TASKS or colon != ":" or start not in DIGITS or length not in DIGITS or int(length) < 1:
        raise ValueError(f"not a toy prompt: {text!r}")
    return Prompt(task, int(start), int(length))


def reward(prompt: Prompt | str, response: str) -> float:
    """The hidden ground-truth reward of ``response`` (text, e.g. ``"4 6 5 8"``) in [0, 1].

    The fraction of the n = ``prompt.length`` positions holding a digit the task's rule calls good. A
    missing or non-digit token is never good (and breaks the chain for ``up``/``down``), and each
    token past n takes 1 / n off (floored at 0).
    """
    p = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    rule = TASKS[p.task]
    tokens = response.split()
    good, prev = 0, p.start
    n = p.length
    for t in tokens[:n]:
        if t not in DIGITS:
            break
        d = int(t)
        good += rule(p.start, prev, d)
        prev = d
    extra = max(0, len(tokens) - n)
    return max(0.0, (good - extra) / n)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy vocabulary as a ``PreTrainedTokenizerFast`` (pad ``<pad>``, eos ``<eos>``, no BOS)."""
    words = [*SPECIAL_TOKENS, ":", *sorted(TASKS), *DIGITS]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins tokens with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="right")


def sample_prompts(n: int, rng: random.Random) -> list[Prompt]:
    """``n`` prompts, task, start digit and length (``MIN_LEN``..``MAX_LEN``) uniform."""
    names = sorted(TASKS)
    return [Prompt(rng.choice(names), rng.randrange(10), rng.randint(MIN_LEN, MAX_LEN)) for _ in range(n)]


def sample_response(prompt: Prompt, rng: random.Random, *, good: bool, p_rule: float = 0.9) -> str:
    """A response from the "good" or the "bad" mode of the toy data.

    Each digit, with probability ``p_rule``, is drawn from the digits the hidden rule calls good (bad
    mode: not good) given the previous digit, else uniformly; when no digit qualifies it is uniform.
    """
    rule = TASKS[prompt.task]
    prev, out = prompt.start, []
    for _ in range(prompt.length):
        allowed = [d for d in range(10) if rule(prompt.start, prev, d) == good]
        d = rng.choice(allowed) if allowed and rng.random() < p_rule else rng.randrange(10)
        out.append(d)
        prev = d
    return " ".join(map(str, out))


def sample_mixed(prompt: Prompt, rng: random.Random) -> str:
    """A response from the even mixture of the good and bad modes (the SFT data distribution)."""
    return sample_response(prompt, rng, good=rng.random() < 0.5)


def sft_examples(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` (prompt text, response) pairs, half good and half bad: the data carry no preference."""
    return [(p.text, sample_mixed(p, rng)) for p in sample_prompts(n, rng)]


def preference_pairs(n: int, rng: random.Random, *, k: int = 2) -> list[Pair]:
    """``n`` pairs: ``k`` responses to one prompt from the SFT data distribution, the best chosen and the
    worst by the hidden reward rejected.

    Prompts whose ``k`` responses all score the same are redrawn, so every pair has a strict
    preference. ``strength`` holds the reward gap; ``metadata`` the task and both rewards.
    """
    pairs: list[Pair] = []
    while len(pairs) < n:
        p = sample_prompts(1, rng)[0]
        scored = sorted(((reward(p, r), r) for r in (sample_mixed(p, rng) for _ in range(k))),
                        key=lambda x: -x[0])
        (rc, chosen), (rr, rejected) = scored[0], scored[-1]
        if rc == rr:
            continue
        pairs.append(Pair(p.text, chosen, rejected, strength=rc - rr, source="implicit",
                          metadata={"task": p.task, "chosen_reward": rc, "rejected_reward": rr}))
    return pairs


__all__ = ["MIN_LEN", "MAX_LEN", "DEFAULT_LEN", "TASKS", "Prompt", "parse_prompt", "reward", "build_tokenizer",
           "sample_prompts", "sample_response", "sample_mixed", "sft_examples", "preference_pairs"]
