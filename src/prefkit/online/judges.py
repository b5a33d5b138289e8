"""Judges: who labels the samples of the online loop (generate, judge, learn).

One protocol, :class:`Judge`, with two shapes a judge declares by two attributes:

- **pointwise** (``pointwise = True``): ``score(prompts, completions) -> (N,)`` scores, higher = better;
- **pairwise** (``pairwise = True``): ``prefer(prompts, a, b) -> (N,)``, ``P(a_i ≻ b_i)`` in [0, 1].

Prompts and completions are prefkit values (:mod:`prefkit.data.records`): text, or tuples of
``Message``. All calls are batched over N and return float32 CPU tensors.

The loop asks through two helpers, which handle the shapes:

- :func:`preference_probs` uses ``prefer`` when the judge is pairwise, else
  ``P(a ≻ b) = σ(r_a − r_b)`` from ``score`` (Bradley–Terry), and says which in
  :attr:`Preferences.method` (log it once);
- :func:`judge_scores` asks a pointwise score; a pairwise-only judge gives a one-line ``ConfigError``.

:func:`preference_matrix` gives the (K, K) matrix of one prompt's K samples against each other (SPPO's
``P̂(y ≻ π_t)`` is its row mean off the diagonal).

Implementations:

- :class:`FunctionJudge`: Python functions (verifiable rewards), with :func:`regex_judge` and
  :func:`exact_match_judge`;
- :class:`RewardModelJudge`: a prefkit :class:`~prefkit.models.reward.RewardModel`; scalar heads are
  pointwise and pairwise (``σ`` of the difference), GPM heads pairwise only (``σ(v_aᵀ R v_b)``, which
  can be intransitive);
- :class:`LMJudge`: a local causal LM asked "which response is better, A or B?" in both orders, to
  cancel position bias; it also reports how often the two orders agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from prefkit.data.batch import right_pad
from prefkit.data.records import Completion, Message, Prompt
from prefkit.errors import ConfigError
from prefkit.models.decoder import decoder_and_head
from prefkit.models.heads import GPMHead, RewardOutput
from prefkit.models.reward import RewardModel

POINTWISE_NOTE = "pointwise judge: P(a≻b) = σ(r_a − r_b)"
"""What :func:`preference_probs` reports when it derives preferences from pointwise scores."""
PAIRWISE_NOTE = "pairwise judge: P(a≻b) from prefer()"
"""What :func:`preference_probs` reports when the judge answers pairs itself."""


@runtime_checkable
class Judge(Protocol):
    """A judge has one or both shapes and says which.

    ``score`` need only work when ``pointwise`` is true, ``prefer`` when ``pairwise`` is true; the other
    raises a one-line ``ConfigError``. A judge may also offer ``verdicts(prompts, a, b) ->``
    :class:`Verdicts` (both-order answers and their agreement, as :class:`LMJudge` does);
    :func:`preference_probs` uses it when present.
    """

    pointwise: bool
    pairwise: bool

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> Tensor:
        """Scores (N,), higher = better."""
        ...

    def prefer(self, prompts: Sequence[Prompt], a: Sequence[Completion], b: Sequence[Completion]) -> Tensor:
        """``P(a_i ≻ b_i)`` (N,) in [0, 1]."""
        ...


@dataclass(frozen=True)
class Verdicts:
    """A pairwise judge's answers asked in both orders (N pairs).

    probs: (N,) ``P(a ≻ b) = ½ (first + 1 − second)``.
    first: (N,) P(the first-shown response is better) with a shown first.
    second: (N,) the same with b shown first (so it estimates ``P(b ≻ a)``).
    agree: (N,) bool, both orders pick the same response.
    """

    probs: Tensor
    first: Tensor
    second: Tensor
    agree: Tensor

    @property
    def agreement(self) -> float:
        """Fraction of pairs where both orders pick the same response (NaN for no pairs)."""
        return float(self.agree.float().mean()) if self.agree.numel() else math.nan


@dataclass(frozen=True)
class Preferences:
    """What :func:`preference_probs` returns.

    probs: (N,) ``P(a_i ≻ b_i)``.
    method: how they were obtained, one line to log (:data:`POINTWISE_NOTE` or :data:`PAIRWISE_NOTE`).
    scores_a, scores_b: (N,) the pointwise scores used, when the judge is pointwise-only; else None.
    agreement: fraction of pairs whose two orders agreed, for judges that ask both (:class:`LMJudge`).
    """

    probs: Tensor
    method: str
    scores_a: Tensor | None = None
    scores_b: Tensor | None = None
    agreement: float | None = None


def _check_lengths(**seqs: Sequence[Any]) -> int:
    lengths = {name: len(s) for name, s in seqs.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"judge inputs differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


def judge_name(judge: Any) -> str:
    """A short name for messages: the judge's ``name`` attribute or its class name."""
    return str(getattr(judge, "name", None) or type(judge).__name__)


def judge_scores(judge: Judge, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> Tensor:
    """Pointwise scores (N,) from ``judge``; a pairwise-only judge is a one-line ``ConfigError``."""
    if not getattr(judge, "pointwise", False):
        raise ConfigError(f"judge {judge_name(judge)!r} is pairwise only and gives no pointwise score; use an "
                          "algorithm that compares pairs, or a pointwise judge (a function or a scalar reward model)")
    _check_lengths(prompts=prompts, completions=completions)
    return judge.score(prompts, completions)


def preference_probs(judge: Judge, prompts: Sequence[Prompt], a: Sequence[Completion],
                     b: Sequence[Completion]) -> Preferences:
    """``P(a_i ≻ b_i)`` (N,) from any judge.

    A pairwise judge answers with ``verdicts`` (when it has it) or ``prefer``; a pointwise-only judge
    gives ``σ(r_a − r_b)`` from its scores (Bradley–Terry), and ``method`` says so.
    """
    _check_lengths(prompts=prompts, a=a, b=b)
    if getattr(judge, "pairwise", False):
        verdicts = getattr(judge, "verdicts", None)
        if callable(verdicts):
            v = verdicts(prompts, a, b)
            return Preferences(v.probs, PAIRWISE_NOTE, agreement=v.agreement)
        return Preferences(judge.prefer(prompts, a, b), PAIRWISE_NOTE)
    if not getattr(judge, "pointwise", False):
        raise ConfigError(f"judge {judge_name(judge)!r} declares neither shape: set pointwise or pairwise to True")
    n = len(prompts)
    both = judge.score(list(prompts) * 2, [*a, *b]).float()
    ra, rb = both[:n], both[n:]
    return Preferences(torch.sigmoid(ra - rb), POINTWISE_NOTE, scores_a=ra, scores_b=rb)


def preference_matrix(judge: Judge, prompt: Prompt, completions: Sequence[Completion]) -> tuple[Tensor, Preferences]:
    """(K, K) ``M[i, j] = P(y_i ≻ y_j)`` for one prompt's K completions, and the :class:`Preferences` of
    the K(K−1)/2 pairs ``i < j`` asked (``M[j, i] = 1 − M[i, j]``; the diagonal is ½)."""
    k = len(completions)
    ii, jj = torch.triu_indices(k, k, offset=1)
    pairs = preference_probs(judge, [prompt] * len(ii), [completions[i] for i in ii.tolist()],
                             [completions[j] for j in jj.tolist()])
    m = torch.full((k, k), 0.5)
    m[ii, jj] = pairs.probs.float()
    m[jj, ii] = 1.0 - pairs.probs.float()
    return m, pairs


# -- Python functions ------------------------------------------------------------------------------------


def completion_text(completion: Completion) -> str:
    """A completion's text: as is, or its messages' contents joined by blank lines (roles left out)."""
    if isinstance(completion, str):
        return completion
    return "\n\n".join(m.content for m in completion)


class FunctionJudge:
    """A judge from Python functions (verifiable rewards: a hidden rule, a checker, a unit test).

    ``score_fn(prompt, completion) -> float`` makes it pointwise; ``prefer_fn(prompt, a, b) -> float``,
    returning ``P(a ≻ b)`` in [0, 1], makes it pairwise. Give one or both. The functions are called
    once per example.
    """

    def __init__(self, score_fn: Callable[[Prompt, Completion], float] | None = None,
                 prefer_fn: Callable[[Prompt, Completion, Completion], float] | None = None, *,
                 name: str | None = None):
        if score_fn is None and prefer_fn is None:
            raise ConfigError("FunctionJudge needs score_fn (pointwise), prefer_fn (pairwise) or both")
        self.score_fn, self.prefer_fn = score_fn, prefer_fn
        self.pointwise = score_fn is not None
        self.pairwise = prefer_fn is not None
        self.name = name or getattr(score_fn or prefer_fn, "__name__", "function")

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> Tensor:
        if self.score_fn is None:
            raise ConfigError(f"judge {self.name!r} is pairwise only (no score_fn); use preference_probs")
        _check_lengths(prompts=prompts, completions=completions)
        return torch.tensor([float(self.score_fn(p, c)) for p, c in zip(prompts, completions)],
                            dtype=torch.float32)

    def prefer(self, prompts: Sequence[Prompt], a: Sequence[Completion], b: Sequence[Completion]) -> Tensor:
        if self.prefer_fn is None:
            raise ConfigError(f"judge {self.name!r} is pointwise only (no prefer_fn); use preference_probs, "
                              "which gives σ(r_a − r_b)")
        _check_lengths(prompts=prompts, a=a, b=b)
        probs = torch.tensor([float(self.prefer_fn(p, x, y)) for p, x, y in zip(prompts, a, b)],
                             dtype=torch.float32)
        bad = ~((probs >= 0) & (probs <= 1))
        if bool(bad.any()):
            raise ConfigError(f"judge {self.name!r}: prefer_fn must return P(a ≻ b) in [0, 1], got "
                              f"{float(probs[bad][0])}")
        return probs


def regex_judge(pattern: str | re.Pattern[str], *, fullmatch: bool = False, flags: int = 0) -> FunctionJudge:
    """Pointwise: 1.0 when the completion's text matches ``pattern`` (``re.search``; ``re.fullmatch``
    with ``fullmatch=True``), else 0.0."""
    rx = re.compile(pattern, flags) if isinstance(pattern, str) else pattern
    find = rx.fullmatch if fullmatch else rx.search

    def matches(prompt: Prompt, completion: Completion) -> float:
        return 1.0 if find(completion_text(completion)) else 0.0

    return FunctionJudge(matches, name=f"regex {rx.pattern!r}")


def _squash(text: str) -> str:
    return " ".join(text.split())


def exact_match_judge(answers: Mapping[Any, str | Sequence[str]] | Callable[[Prompt], str | Sequence[str]], *,
                      normalize: Callable[[str], str] | None = _squash) -> FunctionJudge:
    """Pointwise: 1.0 when the completion equals the prompt's answer, else 0.0.

    ``answers``: a mapping from prompt (text, or a tuple of ``Message``) to its answer, or a function
    ``prompt -> answer``; an answer may be a list of accepted strings. ``normalize`` is applied to both
    sides (default: strip and collapse whitespace; ``None``: compare exactly). A prompt with no answer
    is a one-line ``ConfigError``.
    """
    norm = normalize or (lambda s: s)

    def lookup(prompt: Prompt) -> str | Sequence[str]:
        if callable(answers):
            return answers(prompt)
        try:
            return answers[prompt]
        except KeyError:
            shown = completion_text(prompt) if not isinstance(prompt, str) else prompt
            raise ConfigError(f"exact_match_judge: no answer for prompt {shown[:60]!r}") from None

    def correct(prompt: Prompt, completion: Completion) -> float:
        answer = lookup(prompt)
        accepted = {norm(answer)} if isinstance(answer, str) else {norm(x) for x in answer}
        return 1.0 if norm(completion_text(completion)) in accepted else 0.0

    return FunctionJudge(correct, name="exact_match")


# -- reward models ---------------------------------------------------------------------------------------


def _to(out: RewardOutput, device: torch.device) -> RewardOutput:
    return RewardOutput(*(None if v is None else v.to(device) for v in
                          (out.rewards, out.attributes, out.embeddings, out.gate)))


class RewardModelJudge:
    """A prefkit :class:`~prefkit.models.reward.RewardModel` as a judge.

    Scalar-reward heads (scalar, multi-objective, tie) are pointwise (``score`` = ``model.score``) and
    pairwise (``P(a ≻ b) = σ(r_a − r_b)``; for a tie head the probability given no tie). A GPM head is
    pairwise only: ``P(a ≻ b) = σ(v_aᵀ R v_b)`` (``head.preference_logits``), which can be intransitive.
    Inference runs in eval mode without gradients (``RewardModel.outputs_for``).

    An empty (or whitespace-only) completion, which a policy produces when it samples EOS first, is not a
    valid record, so the model never sees it: it scores ``empty_score`` when given, else the lowest score
    of the other completions of the same call (0.0 when all are empty); in ``prefer`` it loses to any
    non-empty completion (P = 0 or 1) and ties with another empty one (P = ½).
    """

    pairwise = True

    def __init__(self, model: RewardModel, *, batch_size: int = 32, name: str | None = None,
                 empty_score: float | None = None):
        self.model = model
        self.batch_size = batch_size
        self.empty_score = empty_score
        self.pointwise = not isinstance(model.head, GPMHead)
        self.name = name or f"reward model ({model.head.kind} head)"

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> Tensor:
        if not self.pointwise:
            raise ConfigError(f"judge {self.name!r} is pairwise only (a GPM head has no scalar score); use "
                              "preference_probs or an algorithm that compares pairs")
        n = _check_lengths(prompts=prompts, completions=completions)
        keep = [i for i in range(n) if not _empty(completions[i])]
        if len(keep) == n:
            return self.model.score(list(prompts), list(completions), batch_size=self.batch_size)
        scored = self.model.score([prompts[i] for i in keep], [completions[i] for i in keep],
                                  batch_size=self.batch_size) if keep else torch.zeros(0)
        low = self.empty_score if self.empty_score is not None else (float(scored.min()) if keep else 0.0)
        out = torch.full((n,), low, dtype=scored.dtype if keep else torch.float32)
        out[keep] = scored
        return out

    @torch.no_grad()
    def prefer(self, prompts: Sequence[Prompt], a: Sequence[Completion], b: Sequence[Completion]) -> Tensor:
        n = _check_lengths(prompts=prompts, a=a, b=b)
        if n == 0:
            return torch.zeros(0)
        empty_a = torch.tensor([_empty(x) for x in a])
        empty_b = torch.tensor([_empty(x) for x in b])
        both = ~(empty_a | empty_b)
        probs = torch.where(empty_a & empty_b, 0.5, torch.where(empty_a, 0.0, 1.0)).float()
        keep = both.nonzero().flatten().tolist()
        if not keep:
            return probs
        m = len(keep)
        out = self.model.outputs_for([prompts[i] for i in keep] * 2, [a[i] for i in keep] + [b[i] for i in keep],
                                     batch_size=self.batch_size)
        device = next(self.model.head.parameters(), torch.zeros(0)).device
        out = _to(out, device)
        logits = self.model.head.preference_logits(out.select(slice(0, m)), out.select(slice(m, 2 * m)))
        probs[keep] = torch.sigmoid(logits.float()).cpu()
        return probs


def _empty(completion: Completion) -> bool:
    """Is this completion empty or whitespace only (no valid record can hold it)?"""
    return not completion_text(completion).strip()


# -- a causal LM as a generative judge -------------------------------------------------------------------

DEFAULT_TEMPLATE = (
    "Compare two responses to the same request and decide which one is better: more helpful, correct "
    "and clear.\n\n"
    "Request:\n{question}\n\n"
    "Response {label_a}:\n{response_a}\n\n"
    "Response {label_b}:\n{response_b}\n\n"
    "Which response is better, {label_a} or {label_b}? Reply with the letter only.\n"
    "Better response:"
)
"""The :class:`LMJudge` default prompt. Fields: ``{question}`` (the prompt as text), ``{response_a}``,
``{response_b}`` (the two completions as text, in the order shown) and ``{label_a}``, ``{label_b}``
(the labels, ``A`` and ``B``). Literal braces must be doubled (``str.format``)."""

_TEMPLATE_FIELDS = ("question", "response_a", "response_b", "label_a", "label_b")
_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def prompt_text(prompt: Prompt) -> str:
    """A prompt as text for a judge: as is, or a transcript ``"User: …\\n\\nAssistant: …"``."""
    if isinstance(prompt, str):
        return prompt.strip()
    return "\n\n".join(f"{_ROLE_NAMES.get(m.role, m.role)}: {m.content}" for m in prompt
                       if isinstance(m, Message))


class LMJudge:
    """A local causal LM (``*ForCausalLM`` + its tokenizer) as a generative pairwise judge.

    For each pair the judge reads ``template`` (default :data:`DEFAULT_TEMPLATE`) showing the question
    and the two responses labelled A and B; ``P(A)`` is the next-token probability of the label token A,
    renormalised over the two label tokens: ``P(A) = softmax(ℓ_A, ℓ_B)[0]``. It is asked in both orders
    to cancel position bias::

        P(a ≻ b) = ½ (P_ab(A) + 1 − P_ba(A))

    so ``P(a ≻ b) + P(b ≻ a) = 1`` by construction. The two orders *agree* on a pair when both pick the
    same response (``P_ab(A) > ½`` and ``P_ba(A) < ½``, or both the reverse); :meth:`verdicts` returns
    that, and :attr:`last_agreement` keeps the fraction of the last call.

    With a tokenizer that has a chat template, the filled template is the user message and the label
    follows the generation prompt (``label_lead=""``); without one the text is used as is, with BOS when
    the tokenizer adds one, and the label follows a space (``label_lead=" "``, i.e. ``" A"``). Each label
    must be exactly one token in that position (checked when the judge is built: a one-line
    ``ConfigError`` otherwise). Inputs are not truncated.

    Runs batched (right padding; only the last position goes through the output layer), without
    gradients, in eval mode (the model's mode is restored after).
    """

    pointwise = False
    pairwise = True

    def __init__(self, model: nn.Module, tokenizer: Any, *, template: str = DEFAULT_TEMPLATE,
                 labels: tuple[str, str] = ("A", "B"), label_lead: str | None = None,
                 use_chat_template: bool | None = None, batch_size: int = 8, name: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.template = template
        self.labels = (str(labels[0]), str(labels[1]))
        if self.labels[0] == self.labels[1]:
            raise ConfigError(f"LMJudge labels must differ, got {list(self.labels)}")
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        self.chat = has_chat if use_chat_template is None else bool(use_chat_template)
        if self.chat and not has_chat:
            raise ConfigError("LMJudge: use_chat_template=True but the tokenizer has no chat template")
        self.label_lead = ("" if self.chat else " ") if label_lead is None else label_lead
        self.batch_size = batch_size
        self.name = name or f"LM judge ({type(model).__name__})"
        self.last_agreement: float | None = None
        """Fraction of pairs whose two orders agreed, in the last :meth:`prefer` / :meth:`verdicts` call."""
        self._check_template()
        self.label_ids = self._label_ids()
        """(id of label A, id of label B): the two next tokens compared."""
        self.pad_id = next((i for i in (getattr(tokenizer, "pad_token_id", None),
                                        getattr(tokenizer, "eos_token_id", None)) if i is not None), 0)

    # rendering ---------------------------------------------------------------------------------------

    def _check_template(self) -> None:
        for needed in ("{response_a}", "{response_b}"):
            if needed not in self.template:
                raise ConfigError(f"LMJudge template must contain {needed} (fields: {list(_TEMPLATE_FIELDS)})")
        try:
            self.template.format(**dict.fromkeys(_TEMPLATE_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"LMJudge template does not format ({type(err).__name__}: {err}); its fields "
                              f"are {list(_TEMPLATE_FIELDS)} and literal braces are doubled") from None

    def context(self, prompt: Prompt, first: Completion, second: Completion) -> str:
        """The text the judge reads before its answer, ``first`` shown as label A."""
        filled = self.template.format(question=prompt_text(prompt), response_a=completion_text(first).strip(),
                                      response_b=completion_text(second).strip(), label_a=self.labels[0],
                                      label_b=self.labels[1])
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": filled}], tokenize=False,
                                                      add_generation_prompt=True)
        return filled

    def context_ids(self, text: str) -> list[int]:
        """Token ids of a :meth:`context` (special tokens added only for plain text; a chat template
        writes its own)."""
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def _label_ids(self) -> tuple[int, int]:
        ctx = self.context("Question?", "First answer.", "Second answer.")
        base = self.context_ids(ctx)
        ids = []
        for label in self.labels:
            text = self.label_lead + label
            full = self.context_ids(ctx + text)
            if len(full) != len(base) + 1 or full[:len(base)] != base:
                alone = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                raise ConfigError(f"LMJudge label {text!r} is not one token after the judge prompt in this "
                                  f"tokenizer (it encodes as {list(alone)}); pass labels=/label_lead= that are "
                                  "single tokens")
            ids.append(full[-1])
        return ids[0], ids[1]

    # inference ---------------------------------------------------------------------------------------

    def _last_logits(self, rows: list[list[int]]) -> Tensor:
        """(N, V) next-token logits after each id list (right-padded batch)."""
        device = next(self.model.parameters()).device
        ids, mask = right_pad(rows, self.pad_id)
        ids, mask = ids.to(device), mask.to(device)
        last = mask.sum(1) - 1  # (N,)
        at = torch.arange(len(rows), device=device)
        config = getattr(self.model, "config", None)
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (N, T, V)
            return logits[at, last].float()
        decoder, head = decoder_and_head(self.model)
        out = decoder(input_ids=ids, attention_mask=mask, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (N, T, H)
        return head(hidden[at, last]).float()  # (N, V)

    @torch.no_grad()
    def first_probs(self, prompts: Sequence[Prompt], first: Sequence[Completion],
                    second: Sequence[Completion]) -> Tensor:
        """(N,) P(label A) with ``first`` shown as A: ``softmax(ℓ_A, ℓ_B)[0]`` at the answer position."""
        _check_lengths(prompts=prompts, first=first, second=second)
        rows = [self.context_ids(self.context(p, x, y)) for p, x, y in zip(prompts, first, second)]
        if not rows:
            return torch.zeros(0)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # little padding per batch
        probs = torch.empty(len(rows))
        pick = torch.tensor(self.label_ids)
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                logits = self._last_logits([rows[i] for i in idx])  # (n, V)
                logits = logits[:, pick.to(logits.device)]  # (n, 2): label A, label B
                probs[torch.tensor(idx)] = torch.softmax(logits, dim=-1)[:, 0].cpu()
        finally:
            self.model.train(was_training)
        return probs

    def verdicts(self, prompts: Sequence[Prompt], a: Sequence[Completion], b: Sequence[Completion]) -> Verdicts:
        """Both orders in one batched pass: :class:`Verdicts` (probabilities, per-order answers, agreement)."""
        n = _check_lengths(prompts=prompts, a=a, b=b)
        both = self.first_probs([*prompts, *prompts], [*a, *b], [*b, *a])
        first, second = both[:n], both[n:]
        probs = 0.5 * (first + 1.0 - second)
        agree = (first > 0.5) == (second < 0.5)
        result = Verdicts(probs, first, second, agree)
        self.last_agreement = result.agreement
        return result

    def prefer(self, prompts: Sequence[Prompt], a: Sequence[Completion], b: Sequence[Completion]) -> Tensor:
        return self.verdicts(prompts, a, b).probs

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> Tensor:
        raise ConfigError(f"judge {self.name!r} is pairwise only (an LM judge compares two responses); use "
                          "preference_probs or an algorithm that compares pairs")


__all__ = ["Judge", "Verdicts", "Preferences", "POINTWISE_NOTE", "PAIRWISE_NOTE", "judge_scores",
           "preference_probs", "preference_matrix", "judge_name", "completion_text", "prompt_text",
           "FunctionJudge", "regex_judge", "exact_match_judge", "RewardModelJudge", "LMJudge",
           "DEFAULT_TEMPLATE"]
