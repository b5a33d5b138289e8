"""What a reward model reads: text rendering, token ids, batches, and the pooling of hidden states.

Sequences are rendered to text by :func:`render_text` and tokenized by :class:`RewardTokens`, which
**truncates from the left** by default: for long dialogues the end (the last turns, where the two
responses differ) is what a reward model must see. :func:`encode_for_reward` collates records into a
:class:`~prefkit.data.batch.Batch` (row ``g * B + b`` is sequence ``g`` of example ``b``; pairs: chosen
rows first). :func:`pool` turns hidden states (N, T, H) into one feature vector per sequence;
:func:`pooling_batch` lays the same rows out for the padding-free engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, get_args

import torch
from torch import Tensor

from prefkit.data.batch import Batch, right_pad
from prefkit.data.encode import EncodeConfig, Encoder, TruncationReport, completions_of, cut
from prefkit.data.records import Message, Pair, Ranking, Rating, Record, Unpaired, kind_of
from prefkit.errors import ConfigError, DataError, did_you_mean
from prefkit.models.heads import Pooling

# -- pooling -------------------------------------------------------------------------------------------


def last_index(attention_mask: Tensor) -> Tensor:
    """Index of the last non-pad token per row (works for left and right padding). (N, T) -> (N,)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)  # (N,)


def right_padded(attention_mask: Tensor) -> bool:
    """Every row's real tokens come first (what the fast path's appended token assumes)."""
    lens = attention_mask.sum(1, keepdim=True)  # (N, 1)
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None]  # (1, T)
    return bool(((cols < lens) == attention_mask.bool()).all())


def pooling_batch(input_ids: Tensor, attention_mask: Tensor, group_size: int, mode: Pooling) -> Batch:
    """Right-padded rows (N, T) as a :class:`Batch` whose scored tokens make the packed engine
    (:func:`prefkit.models.packing.packed_hidden`) return the hidden states ``mode`` pools.

    The engine returns the state *before* each scored token, so one token (id 0; nothing attends to it)
    is appended after each sequence: ``"last"`` scores only that one (the last real token's state; the
    group's common prefix can then be shared), ``"mean"`` every token from position 1 on (all real
    states), ``"cls"`` and ``"pooler"`` position 1 (the state of position 0). (N, T + 1) ids and masks.
    """
    n = input_ids.shape[0]
    if n % group_size:
        raise ValueError(f"{n} rows are not a multiple of group_size {group_size}")
    rows = torch.arange(n, device=input_ids.device)
    lens = attention_mask.sum(1).long()  # (N,)
    ids = torch.nn.functional.pad(input_ids, (0, 1))
    mask = torch.nn.functional.pad(attention_mask, (0, 1))
    mask[rows, lens] = 1  # (N, T + 1): the appended token is part of its sequence
    scored = torch.zeros_like(mask)
    if mode == "last":
        scored[rows, lens] = 1
    elif mode == "mean":
        scored = mask.clone()
    else:  # cls, pooler
        scored[:, 1] = 1
    return Batch(kind="ranking" if group_size > 1 else "unpaired", group_size=group_size, input_ids=ids,
                 attention_mask=mask, completion_mask=scored)


def pool(hidden: Tensor, attention_mask: Tensor, mode: Pooling) -> Tensor:
    """One feature vector per sequence: hidden (N, T, H), attention_mask (N, T) -> (N, H).

    ``"last"``: the hidden state of the last token whose mask is 1; ``"mean"``: the mean over tokens
    whose mask is 1; ``"cls"`` and ``"pooler"``: position 0 (BERT's ``[CLS]``; assumes right padding; the
    backbone's pooling layer, ``"pooler"``'s second step, is :class:`~prefkit.models.reward.RewardModel`'s).
    """
    if mode == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_index(attention_mask)]  # (N, H)
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (N, H)
    if mode in ("cls", "pooler"):
        return hidden[:, 0]
    raise ConfigError(f"unknown pooling {mode!r}; choose from {list(get_args(Pooling))}"
                      f"{did_you_mean(str(mode), get_args(Pooling))}")


# -- rendering and tokenization --------------------------------------------------------------------

_ROLE_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant", "tool": "Tool"}


def render_text(prompt: str | tuple[Message, ...], completion: str | tuple[Message, ...],
                tokenizer: Any = None) -> str:
    """The text a reward model reads for (prompt, completion).

    Text records: ``prompt + completion`` (as ``prefkit.data.encode``). Chat records: the tokenizer's
    chat template when it has one, else a plain transcript ``"\\n\\nHuman: …\\n\\nAssistant: …"`` (HH-RLHF
    style; ``system`` and ``tool`` turns are named ``System:`` and ``Tool:``).
    """
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt + completion
    if isinstance(prompt, str) or isinstance(completion, str):
        raise DataError("prompt and completion must both be text or both be chat messages")
    messages = [*prompt, *completion]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                             tokenize=False)
    return "".join(f"\n\n{_ROLE_NAMES[m.role]}: {m.content}" for m in messages)


def sequences_of(record: Record) -> list[str | tuple[Message, ...]]:
    """The completions a record contributes, in batch group order (pairs: chosen, rejected): the data
    layer's :func:`~prefkit.data.encode.completions_of`, as a list."""
    return list(completions_of(record))


def as_text_record(record: Record, tokenizer: Any) -> Record:
    """``record`` with chat prompt/completions rendered to transcript text when the tokenizer has no
    chat template (encoders); unchanged otherwise. See :func:`render_text`."""
    if not isinstance(record.prompt, tuple) or getattr(tokenizer, "chat_template", None):
        return record
    prompt = render_text(record.prompt, (), None)
    done = [render_text(record.prompt + c, (), None)[len(prompt):] for c in sequences_of(record)]  # type: ignore[operator]
    if isinstance(record, Pair):
        return replace(record, prompt=prompt, chosen=done[0], rejected=done[1])
    if isinstance(record, Ranking):
        return replace(record, prompt=prompt, responses=tuple(done))
    return replace(record, prompt=prompt, response=done[0])  # type: ignore[call-arg]


class RewardTokens:
    """The token ids a reward model reads, the same in training and at inference.

    A sequence is the prompt and completion ids of ``prefkit.data.encode`` (no BOS/EOS added there),
    then cut to ``max_length`` from the ``truncation_side`` and wrapped in the tokenizer's own special
    tokens (BERT: ``[CLS] … [SEP]``; Llama-style: ``<bos> …``), so a left cut keeps both the leading
    special token and the end of the dialogue. Chat records without a chat template are rendered as a
    transcript first (:func:`as_text_record`).
    """

    def __init__(self, tokenizer: Any, max_length: int = 512, truncation_side: str = "left"):
        self.tokenizer, self.max_length, self.truncation_side = tokenizer, max_length, truncation_side
        self.encoder = Encoder(tokenizer, EncodeConfig(add_eos=False, add_bos=False))
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next((i for i in range(len(full)) if full[i:i + len(bare)] == bare), 0)
        self.prefix, self.suffix = list(full[:at]), list(full[at + len(bare):])
        if max_length <= len(self.prefix) + len(self.suffix):
            raise ConfigError(f"max_length {max_length} leaves no room besides the special tokens")

    @property
    def pad_id(self) -> int:
        return self.encoder.pad_id

    def wrap(self, ids: Sequence[int]) -> list[int]:
        """Truncate (keeping ``truncation_side``'s opposite end) and add the special tokens."""
        return self.wrap_counted(ids)[0]

    def wrap_counted(self, ids: Sequence[int]) -> tuple[list[int], int]:
        """(:meth:`wrap` of ``ids``, tokens the cut removed), with the data layer's one cut rule
        (:func:`prefkit.data.encode.cut`)."""
        ids = list(ids)
        if self.prefix and ids[:len(self.prefix)] == self.prefix:  # a chat template wrote BOS itself
            ids = ids[len(self.prefix):]
        room = self.max_length - len(self.prefix) - len(self.suffix)
        kept, removed = cut(ids, room, keep="end" if self.truncation_side == "left" else "start")
        return self.prefix + kept + self.suffix, removed

    def wrap_example(self, prompt_ids: Sequence[int], completions: Sequence[Sequence[int]],
                     report: TruncationReport | None = None) -> list[list[int]]:
        """One wrapped id list per completion of one example, counting any cut into ``report`` (a
        left cut takes prompt tokens first, a right cut completion tokens first)."""
        rows, prompt_cut, completion_cut, removed = [], False, False, 0
        for c in completions:
            row, lost = self.wrap_counted([*prompt_ids, *c])
            rows.append(row)
            removed += lost
            if lost:
                if self.truncation_side == "left":
                    prompt_cut = True
                    completion_cut = completion_cut or lost > len(prompt_ids)
                else:
                    completion_cut = True
                    prompt_cut = prompt_cut or lost > len(c)
        if report is not None and removed:
            report.truncated += 1
            report.prompt_truncated += prompt_cut
            report.completion_truncated += completion_cut
            report.tokens_removed += removed
        return rows

    def record_ids(self, record: Record) -> list[list[int]]:
        """One id list per sequence of ``record`` (group order)."""
        prompt, completions = self.encoder.render(as_text_record(record, self.tokenizer))
        return self.wrap_example(prompt, completions)

    def pair_ids(self, prompt: Any, completion: Any) -> list[int]:
        """The ids for one (prompt, completion)."""
        return self.record_ids(Unpaired(prompt=prompt, response=completion, desirable=True))[0]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Right-pad id lists: (N, T) ids and attention mask (:func:`prefkit.data.batch.right_pad`)."""
        return right_pad(rows, self.pad_id)


def encode_for_reward(records: Sequence[Record], tokens: RewardTokens, *,
                      attributes: Sequence[str] = ()) -> Batch:
    """Collate B records of one kind into a :class:`Batch` for a reward model.

    Row ``g * B + b`` is sequence ``g`` of example ``b`` (pairs: chosen rows [0:B), rejected [B:2B)).
    ``completion_mask`` equals ``attention_mask`` (a reward model reads the whole sequence). Per-example
    fields: ``weight``; ``strength`` (NaN where absent); ``ties`` (pairs); ``scores``: rankings (B, K)
    given scores, ratings (B, 1) the score, or (B, A) the named ``attributes`` when given (NaN where
    absent).
    """
    if not records:
        raise ValueError("encode_for_reward needs at least one record")
    kinds = {type(r) for r in records}
    if len(kinds) != 1:
        raise DataError(f"cannot batch different feedback kinds together: {sorted(k.__name__ for k in kinds)}")
    groups = [tokens.record_ids(r) for r in records]
    g = len(groups[0])
    if any(len(s) != g for s in groups):
        raise DataError("rankings of different lengths cannot share a batch; group them by length first")
    input_ids, attention_mask = tokens.pad([groups[b][k] for k in range(g) for b in range(len(records))])
    nan = float("nan")
    strength = None
    if any(r.strength is not None for r in records):
        strength = torch.tensor([nan if r.strength is None else float(r.strength) for r in records])
    ties = torch.tensor([r.tie for r in records]) if isinstance(records[0], Pair) else None
    scores = None
    if isinstance(records[0], Ranking) and any(r.scores is not None for r in records):
        scores = torch.tensor([list(r.scores) if r.scores is not None else [nan] * g for r in records])
    elif isinstance(records[0], Rating):
        if attributes:
            scores = torch.tensor([[float((r.attributes or {}).get(a, nan)) for a in attributes]
                                   for r in records])
        else:
            scores = torch.tensor([[nan if r.score is None else float(r.score)] for r in records])
    return Batch(kind=kind_of(records[0]), group_size=g, input_ids=input_ids,  # type: ignore[arg-type]
                 attention_mask=attention_mask, completion_mask=attention_mask.clone(),
                 strength=strength, weight=torch.tensor([float(r.weight) for r in records]),
                 ties=ties, scores=scores, example_ids=[r.id for r in records])


__all__ = ["render_text", "sequences_of", "as_text_record", "RewardTokens", "encode_for_reward", "pool",
           "pooling_batch", "last_index", "right_padded"]
