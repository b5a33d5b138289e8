"""Encoding records into token ids for training, and collating them into a :class:`Batch`.

Two steps, kept apart so the expensive one can be cached and the cheap one re-run per batch:

1. :class:`Encoder` turns a record into an :class:`EncodedExample`: for each of its sequences (pair:
   chosen, rejected; ranking: responses best first; unpaired / rating: the response) the prompt's and
   the completion's token ids. Truncation happens here and is counted in a :class:`TruncationReport`.
2. :func:`collate` lays B examples out as one :class:`~prefkit.data.batch.Batch` (row g * B + b is
   sequence g of example b; see ``prefkit.data.batch``) with a completion mask over the scored tokens.

Rendering (see ``docs/encoding.md``):

- **Text records**: the sequence is ``prompt + completion``, plain concatenation (no chat template,
  no separator: put the space or newline you want in the data, e.g. ``"...Assistant:"`` + ``" Sure"``).
- **Chat records**: the prompt is rendered with the tokenizer's chat template and
  ``add_generation_prompt=True``; the whole conversation (prompt + completion messages) without it.
  The completion text is what the second adds to the first; a template for which the first is not a
  prefix of the second is rejected with a :class:`~prefkit.errors.ConfigError`.
- Prompt and completion are **tokenized separately** (``add_special_tokens=False``) and concatenated,
  so the prompt/completion boundary is exact. For BPE tokenizers whose pre-tokenizer splits at the
  boundary (a completion starting with a space, a newline or a special token, as chat templates do)
  this equals tokenizing the whole text; otherwise a merge across the boundary is lost, which only
  changes how the same text is split, never the text.
- **BOS exactly once**: prepended when the tokenizer itself prepends one to plain text (Llama, Mistral,
  Gemma; not GPT-2 or Qwen) and the rendered prompt does not already start with it (templates that
  write ``{{ bos_token }}``). ``EncodeConfig.add_bos=False`` never adds one.
- **EOS exactly once**: appended to every completion unless it already ends with it (templates that
  close each assistant turn with the EOS token). A template that writes whitespace after that EOS
  (``"<eos>\\n"``) has the trailing whitespace trimmed, so the completion ends exactly at EOS.

Truncation (``EncodeConfig``), per example, the prompt being shared by its sequences:

- ``max_prompt_length``: a longer prompt keeps its **end** (the BOS stays first);
- ``max_length`` (prompt + completion, per sequence): when the longest completion does not fit, the
  prompt is first cut (from the left) down to ``max(max_length - longest completion,
  max_length // 2)`` tokens, then each completion keeps its **start** (losing its EOS) to fit;
- ``truncation="drop"`` drops any example that would need cutting, ``"raise"`` raises a
  :class:`~prefkit.errors.DataError` naming it. Every cut and drop is counted in the report.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch

from prefkit.data.batch import Batch
from prefkit.data.records import KINDS, Message, Pair, Ranking, Rating, Record, Unpaired
from prefkit.errors import ConfigError, DataError, check_known_keys, did_you_mean
from prefkit.kinds import RecordKind

Truncation = Literal["keep_end", "drop", "raise"]
Kind = RecordKind
"""The record kinds (``prefkit.kinds``): the one vocabulary for records, examples and batches."""

DROP_REASONS = {
    "prompt_too_long": "prompt longer than max_prompt_length",
    "too_long": "longer than max_length",
    "empty_completion": "completion encodes to no tokens",
}


@dataclass(frozen=True)
class EncodeConfig:
    """How records become token ids (see the module docstring for the exact rules)."""

    max_length: int | None = 1024
    """Most tokens per sequence (prompt + completion, BOS and EOS included; TRL's default, 1,024); None:
    no limit. Training refuses a value above the model's position limit (``max_position_embeddings``)."""

    max_prompt_length: int | None = None
    """Most prompt tokens (BOS included); a longer prompt keeps its end. None: no separate limit."""

    truncation: Truncation = "keep_end"
    """What to do with a too-long example: ``"keep_end"`` cuts it (keeps the prompt's end and the
    completion's start), ``"drop"`` leaves it out, ``"raise"`` stops with an error. Always counted."""

    add_eos: bool = True
    """Append the tokenizer's EOS to each completion (once; not when the chat template already did)."""

    add_bos: bool = True
    """Prepend BOS when the tokenizer uses one and the rendered prompt lacks it; False: never add."""

    def __post_init__(self) -> None:
        if self.truncation not in get_args(Truncation):
            raise ConfigError(f"unknown truncation {self.truncation!r}; choose from "
                              f"{list(get_args(Truncation))}{did_you_mean(str(self.truncation), get_args(Truncation))}")
        for name, low in (("max_length", 2), ("max_prompt_length", 1)):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
                raise ConfigError(f"{name} must be an integer >= {low} or null, got {v!r}")
        if (self.max_length is not None and self.max_prompt_length is not None
                and self.max_prompt_length >= self.max_length):
            raise ConfigError(f"max_prompt_length ({self.max_prompt_length}) must be below max_length "
                              f"({self.max_length}) to leave room for the completion")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EncodeConfig:
        """Build from a mapping (YAML); an unknown key is a ConfigError naming the nearest valid one."""
        check_known_keys(values, [f.name for f in fields(cls)], "encoding option")
        return cls(**values)


@dataclass(frozen=True)
class EncodedSequence:
    """One sequence: ``prompt_ids + completion_ids`` is what the model reads; the completion is scored."""

    prompt_ids: list[int]
    completion_ids: list[int]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass(frozen=True)
class EncodedExample:
    """One record's sequences in its group order, plus its per-example fields.

    ``sequences``: pair -> [chosen, rejected]; ranking -> responses best first; unpaired and
    rating -> [response]. All sequences share the same (possibly truncated) prompt ids.
    """

    kind: Kind
    sequences: list[EncodedSequence]
    id: str | None = None
    strength: float | None = None
    weight: float = 1.0
    label: bool | None = None  # unpaired: desirable
    tie: bool | None = None  # pairs: tie flag
    scores: tuple[float, ...] | None = None  # ranking: one per response; rating: see score_names
    score_names: tuple[str, ...] | None = None  # rating: ("score", *sorted attribute names)
    tie_groups: tuple[int, ...] | None = None  # ranking: rank group per response (equal = tied)
    user_id: str | None = None
    truncated: bool = False  # some prompt or completion tokens were cut

    @property
    def group_size(self) -> int:
        """G: sequences in this example."""
        return len(self.sequences)

    def num_tokens(self) -> int:
        """Tokens over all sequences."""
        return sum(len(s) for s in self.sequences)


@dataclass
class TruncationReport:
    """Counts of what truncation did; ``str()`` is a one-line summary for logs."""

    examples: int = 0
    """Examples seen."""
    truncated: int = 0
    """Examples kept after cutting tokens."""
    prompt_truncated: int = 0
    """Examples whose prompt was cut (left side)."""
    completion_truncated: int = 0
    """Examples with at least one completion cut (right side, EOS lost)."""
    tokens_removed: int = 0
    """Tokens cut, over all sequences."""
    dropped: Counter[str] = field(default_factory=Counter)
    """Dropped examples per reason (keys of ``DROP_REASONS``)."""
    longest: int = 0
    """Longest sequence seen before truncation, in tokens."""

    @property
    def kept(self) -> int:
        """Examples returned (as is or truncated)."""
        return self.examples - sum(self.dropped.values())

    def add(self, other: TruncationReport) -> None:
        """Accumulate ``other`` into this report."""
        self.examples += other.examples
        self.truncated += other.truncated
        self.prompt_truncated += other.prompt_truncated
        self.completion_truncated += other.completion_truncated
        self.tokens_removed += other.tokens_removed
        self.dropped.update(other.dropped)
        self.longest = max(self.longest, other.longest)

    def __str__(self) -> str:
        n_drop = sum(self.dropped.values())
        text = (f"encoded {self.examples:,} examples: {self.examples - self.truncated - n_drop:,} as is, "
                f"{self.truncated:,} truncated")
        if self.truncated:
            text += (f" (prompt cut in {self.prompt_truncated:,}, completion cut in "
                     f"{self.completion_truncated:,}; {self.tokens_removed:,} tokens removed)")
        text += f", {n_drop:,} dropped"
        if n_drop:
            text += " (" + ", ".join(f"{c:,} {DROP_REASONS.get(r, r)}" for r, c in
                                     sorted(self.dropped.items())) + ")"
        return text + f"; longest sequence {self.longest:,} tokens"


def _record_kind(record: Record) -> Kind:
    kind = KINDS.get(type(record))
    if kind is None:
        raise DataError(f"cannot encode a {type(record).__name__}; expected Pair, Ranking, Rating or Unpaired")
    return kind  # type: ignore[return-value]


def completions_of(record: Record) -> tuple[str | tuple[Message, ...], ...]:
    """The completions of a record in group order: pair (chosen, rejected); ranking its responses,
    best first; rating and unpaired (response,). The one definition of a record's sequences."""
    _record_kind(record)  # refuses anything that is not a record
    if isinstance(record, Pair):
        return (record.chosen, record.rejected)
    if isinstance(record, Ranking):
        return tuple(record.responses)
    return (record.response,)  # type: ignore[union-attr]


def cut(ids: Sequence[int], room: int, *, keep: Literal["start", "end"]) -> tuple[list[int], int]:
    """``ids`` cut to at most ``room`` tokens, keeping its start or its end: (kept ids, tokens removed).

    The one truncation rule: the encoder cuts prompts (keeping the end) and completions (keeping the
    start) with it, and reward-model inputs (``prefkit.models.reward_inputs``) whole sequences.
    """
    ids = list(ids)
    room = max(room, 0)
    if len(ids) <= room:
        return ids, 0
    return (ids[len(ids) - room:] if keep == "end" else ids[:room]), len(ids) - room


def _as_dicts(messages: Iterable[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def quiet_length_warning(tokenizer: Any) -> None:
    """Silence the tokenizer's one-time "Token indices sequence length is longer than the specified maximum"
    notice: prefkit tokenizes whole texts and then truncates them itself (``cut``), reporting every cut."""
    flags = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(flags, dict):
        flags["sequence-length-is-longer-than-the-specified-maximum"] = True


class Encoder:
    """Turns records into :class:`EncodedExample` s with a tokenizer and an :class:`EncodeConfig`.

    ``encode`` counts into the cumulative ``self.report``; ``encode_all`` also returns its own report.
    """

    def __init__(self, tokenizer: Any, config: EncodeConfig | None = None):
        self.tokenizer = tokenizer
        quiet_length_warning(tokenizer)
        self.config = config or EncodeConfig()
        self.report = TruncationReport()
        self.eos_id: int | None = tokenizer.eos_token_id
        if self.config.add_eos and self.eos_id is None:
            raise ConfigError("the tokenizer has no EOS token; set its eos_token or use add_eos: false")
        self.bos_id: int | None = self._detect_bos() if self.config.add_bos else None
        self._eos_text: str | None = tokenizer.eos_token if self.eos_id is not None else None

    def _detect_bos(self) -> int | None:
        """The BOS id when the tokenizer prepends one to plain text itself, else None."""
        bos = self.tokenizer.bos_token_id
        if bos is None:
            return None
        ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return bos if ids and ids[0] == bos else None

    @property
    def pad_id(self) -> int:
        """The id to pad with: the tokenizer's pad token, else its EOS (padding is masked anyway)."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.eos_id
        if pad is None:
            raise ConfigError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        return int(pad)

    # -- rendering -----------------------------------------------------------------------------------

    def _apply_template(self, messages: tuple[Message, ...], *, add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                _as_dicts(messages), add_generation_prompt=add_generation_prompt, tokenize=False)
        except Exception as err:  # jinja2 raise_exception(...) and friends: report as a data error
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f"the chat template refused this conversation ({first}); check the roles and "
                            "their order, or use a template that accepts them", reason="template") from err

    def _render_chat(self, prompt: tuple[Message, ...],
                     completions: Sequence[tuple[Message, ...]]) -> tuple[str, list[str]]:
        """(prompt text, completion texts) from the chat template (see module docstring)."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError("chat records need a tokenizer with a chat template; set "
                              "tokenizer.chat_template or convert the records to text")
        prompt_text = self._apply_template(prompt, add_generation_prompt=True)
        out = []
        for completion in completions:
            full_text = self._apply_template(prompt + completion, add_generation_prompt=False)
            if not full_text.startswith(prompt_text):
                i = next((j for j, (a, b) in enumerate(zip(prompt_text, full_text, strict=False)) if a != b),
                         min(len(prompt_text), len(full_text)))
                raise ConfigError(
                    "the chat template is not prefix-consistent (the prompt rendered with "
                    "add_generation_prompt=True is not the start of the full conversation; they differ at "
                    f"character {i}: {prompt_text[i:i + 30]!r} vs {full_text[i:i + 30]!r}); use a template "
                    "that renders earlier turns the same way, or convert the records to text")
            text = full_text[len(prompt_text):]
            stripped = text.rstrip()
            if self._eos_text is not None and stripped != text and stripped.endswith(self._eos_text):
                text = stripped  # a template that writes "<eos>\n": end the completion at its EOS
            out.append(text)
        return prompt_text, out

    def render_text(self, record: Record) -> tuple[str, list[str]]:
        """(prompt text, completion text per sequence in group order), before tokenization."""
        completions = completions_of(record)
        if isinstance(record.prompt, tuple):
            try:
                return self._render_chat(record.prompt, completions)  # type: ignore[arg-type]
            except DataError as err:
                if record.id is None:
                    raise
                raise DataError(f"example {record.id!r}: {err.message}", reason=err.reason) from err
        return record.prompt, [str(c) for c in completions]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens added (one batched call: fast tokenizers run it
        in parallel)."""
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return [list(x) if t else [] for x, t in zip(ids, texts, strict=True)]

    def _add_special(self, prompt: list[int], completions: list[list[int]]) -> None:
        """BOS once at the start of the prompt, EOS once at the end of each completion (in place)."""
        if self.bos_id is not None and (not prompt or prompt[0] != self.bos_id):
            prompt.insert(0, self.bos_id)
        if self.config.add_eos:
            for ids in completions:
                if not ids or ids[-1] != self.eos_id:
                    ids.append(int(self.eos_id))  # type: ignore[arg-type]  # not None: checked in __init__

    def render(self, record: Record) -> tuple[list[int], list[list[int]]]:
        """Untruncated (prompt ids, completion ids per sequence in group order), BOS/EOS added."""
        prompt_text, texts = self.render_text(record)
        prompt, *completions = self._tokenize([prompt_text, *texts])
        self._add_special(prompt, completions)
        return prompt, completions

    # -- encoding ------------------------------------------------------------------------------------

    def encode(self, record: Record) -> EncodedExample | None:
        """Encode one record (None when dropped); counts into ``self.report``."""
        prompt, completions = self.render(record)
        return self._finish(record, prompt, completions, self.report)

    def encode_all(self, records: Iterable[Record], *, chunk_size: int = 1024
                   ) -> tuple[list[EncodedExample], TruncationReport]:
        """Encode many records; returns the kept examples (input order) and this call's report.

        Texts are tokenized ``chunk_size`` records at a time in one batched tokenizer call.
        """
        report = TruncationReport()
        out: list[EncodedExample] = []
        chunk: list[tuple[int, Record]] = []

        def flush() -> None:
            rendered, texts = [], []
            for i, record in chunk:
                prompt_text, completion_texts = self._located(i, record, self.render_text, record)
                rendered.append((len(texts), len(completion_texts)))
                texts += [prompt_text, *completion_texts]
            ids = self._tokenize(texts)
            for (i, record), (start, g) in zip(chunk, rendered, strict=True):
                prompt, completions = ids[start], ids[start + 1:start + 1 + g]
                self._add_special(prompt, completions)
                ex = self._located(i, record, self._finish, record, prompt, completions, report)
                if ex is not None:
                    out.append(ex)
            chunk.clear()

        for i, record in enumerate(records):
            chunk.append((i, record))
            if len(chunk) >= chunk_size:
                flush()
        if chunk:
            flush()
        self.report.add(report)
        return out, report

    @staticmethod
    def _located(i: int, record: Record, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, with a DataError about an id-less record prefixed by its index."""
        try:
            return fn(*args)
        except DataError as err:
            if record.id is not None:
                raise
            raise DataError(f"record {i}: {err.message}", reason=err.reason) from err

    def _finish(self, record: Record, prompt: list[int], completions: list[list[int]],
                report: TruncationReport) -> EncodedExample | None:
        """Truncate (or drop / raise) and build the example; counts into ``report``."""
        kind = _record_kind(record)
        cfg = self.config
        report.examples += 1
        report.longest = max(report.longest, len(prompt) + max(len(c) for c in completions))

        # Budgets (see module docstring): prompt keeps its end, completions keep their start.
        prompt_budget = len(prompt) if cfg.max_prompt_length is None else min(len(prompt), cfg.max_prompt_length)
        reason = "prompt_too_long" if prompt_budget < len(prompt) else None
        if cfg.max_length is not None:
            longest_completion = max(len(c) for c in completions)
            if prompt_budget + longest_completion > cfg.max_length:
                reason = reason or "too_long"
                prompt_budget = min(prompt_budget,
                                    max(cfg.max_length - longest_completion, cfg.max_length // 2))
        if not all(completions):
            reason = "empty_completion"
        if reason is not None and (cfg.truncation != "keep_end" or reason == "empty_completion"):
            if cfg.truncation == "raise":
                name = f"example {record.id!r}" if record.id else "the example"
                total = len(prompt) + max(len(c) for c in completions)
                raise DataError(
                    f"{name} is {DROP_REASONS[reason]} ({len(prompt)} prompt tokens, {total} in all; "
                    f"max_prompt_length={cfg.max_prompt_length}, max_length={cfg.max_length}); raise the "
                    "limits or set truncation to 'keep_end' or 'drop'", reason=reason)
            report.dropped[reason] += 1
            return None

        removed = 0
        prompt_cut = prompt_budget < len(prompt)
        if prompt_cut:
            bos = self.tokenizer.bos_token_id
            keep_bos = bos is not None and prompt[0] == bos
            head = prompt[:1] if keep_bos else []
            tail, lost = cut(prompt[len(head):], prompt_budget - len(head), keep="end")
            removed += lost
            prompt = head + tail
        completion_cut = False
        if cfg.max_length is not None:
            room = cfg.max_length - len(prompt)
            for i, c in enumerate(completions):
                completions[i], lost = cut(c, room, keep="start")
                completion_cut = completion_cut or lost > 0
                removed += lost
        if prompt_cut or completion_cut:
            report.truncated += 1
            report.prompt_truncated += prompt_cut
            report.completion_truncated += completion_cut
            report.tokens_removed += removed

        scores: tuple[float, ...] | None = None
        score_names: tuple[str, ...] | None = None
        if isinstance(record, Ranking):
            scores = record.scores
        elif isinstance(record, Rating):
            attrs = dict(record.attributes or {})
            score_names = ("score", *sorted(attrs))
            scores = (math.nan if record.score is None else record.score, *(attrs[a] for a in sorted(attrs)))
        return EncodedExample(
            kind=kind,
            sequences=[EncodedSequence(list(prompt), c) for c in completions],
            id=record.id, strength=record.strength, weight=record.weight,
            label=record.desirable if isinstance(record, Unpaired) else None,
            tie=record.tie if isinstance(record, Pair) else None,
            scores=scores, score_names=score_names, user_id=record.user_id,
            tie_groups=record.tie_groups if isinstance(record, Ranking) else None,
            truncated=prompt_cut or completion_cut,
        )

    def collate(self, examples: Sequence[EncodedExample], **kwargs: Any) -> Batch:
        """:func:`collate` with this tokenizer's pad id."""
        return collate(examples, self.pad_id, **kwargs)


# -- collation ---------------------------------------------------------------------------------------


def collate(examples: Sequence[EncodedExample], pad_id: int, *, pad_to_multiple_of: int | None = None,
            layout: Literal["padded", "packed"] = "padded") -> Batch:
    """Lay B examples of one kind and group size G out as a :class:`Batch` of N = G * B sequences.

    Row ``g * B + b`` is sequence ``g`` of example ``b``: for pairs rows [0:B) are the chosen and
    [B:2B) the rejected completions; for rankings rows [kB:(k+1)B) hold every example's k-th preferred
    response (0 = best). ``layout="padded"``: (N, T) right-padded with ``pad_id``, T the longest
    sequence rounded up to ``pad_to_multiple_of``. ``layout="packed"``: one (1, total) row, sequences
    end to end in row order, ``position_ids`` restarting at 0. Both set ``seq_lens`` and
    ``prompt_lens`` (N,). ``completion_mask`` is 1 on completion tokens (EOS included).

    Per-example tensors (B,): ``weight`` (always), ``strength`` (None when no example has one; NaN
    where one lacks it), ``ties`` (pairs), ``labels`` (unpaired), ``scores`` ((B, K) for rankings,
    NaN where absent; (B, A) for ratings in ``score_names`` order). Rankings with ``tie_groups`` add
    ``extras["tie_groups"]`` (B, K) long (0 = best group; a ranking without ties counts 0..K-1).

    Rankings with different k cannot share a batch: group them by ``len(responses)`` first.
    """
    if not examples:
        raise ValueError("collate needs at least one example")
    kinds = {ex.kind for ex in examples}
    if len(kinds) != 1:
        raise DataError(f"cannot collate different feedback kinds in one batch: {sorted(kinds)}; "
                        "batch each kind separately")
    kind = examples[0].kind
    sizes = {ex.group_size for ex in examples}
    if len(sizes) != 1:
        raise DataError(f"cannot collate rankings of different lengths in one batch (k = {sorted(sizes)}); "
                        "group rankings by number of responses before batching")
    g, b = examples[0].group_size, len(examples)
    rows = [examples[j].sequences[i] for i in range(g) for j in range(b)]  # row i * B + j
    seq_lens = torch.tensor([len(s) for s in rows], dtype=torch.long)  # (N,)
    prompt_lens = torch.tensor([len(s.prompt_ids) for s in rows], dtype=torch.long)  # (N,)

    if layout == "padded":
        t = int(seq_lens.max())
        if pad_to_multiple_of:
            t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.full((len(rows), t), pad_id, dtype=torch.long)  # (N, T)
        attention_mask = torch.zeros((len(rows), t), dtype=torch.long)  # (N, T)
        completion_mask = torch.zeros((len(rows), t), dtype=torch.long)  # (N, T)
        for r, s in enumerate(rows):
            p, n = len(s.prompt_ids), len(s)
            input_ids[r, :n] = torch.tensor(s.prompt_ids + s.completion_ids, dtype=torch.long)
            attention_mask[r, :n] = 1
            completion_mask[r, p:n] = 1
        position_ids = None
    elif layout == "packed":
        flat = [tok for s in rows for tok in s.prompt_ids + s.completion_ids]
        input_ids = torch.tensor([flat], dtype=torch.long)  # (1, total)
        attention_mask = torch.ones_like(input_ids)
        completion_mask = torch.tensor(
            [[m for s in rows for m in [0] * len(s.prompt_ids) + [1] * len(s.completion_ids)]],
            dtype=torch.long)  # (1, total)
        position_ids = torch.cat([torch.arange(int(n)) for n in seq_lens]).unsqueeze(0)  # (1, total)
    else:
        raise ConfigError(f"unknown layout {layout!r}; choose 'padded' or 'packed'")

    strengths = [ex.strength for ex in examples]
    strength = None
    if any(s is not None for s in strengths):
        strength = torch.tensor([math.nan if s is None else s for s in strengths], dtype=torch.float32)
    scores = None
    if kind == "rating":
        names = {ex.score_names for ex in examples}
        if len(names) != 1:
            raise DataError(f"cannot collate ratings with different attribute sets in one batch: "
                            f"{sorted(map(list, names))}; give every rating the same attributes")
        scores = torch.tensor([list(ex.scores or ()) for ex in examples], dtype=torch.float32)  # (B, A)
    elif kind == "ranking" and any(ex.scores is not None for ex in examples):
        scores = torch.tensor([list(ex.scores) if ex.scores is not None else [math.nan] * g
                               for ex in examples], dtype=torch.float32)  # (B, K)
    extras = {}
    if kind == "ranking" and any(ex.tie_groups is not None for ex in examples):
        extras["tie_groups"] = torch.tensor([list(ex.tie_groups) if ex.tie_groups is not None
                                             else list(range(g)) for ex in examples])  # (B, K)
    return Batch(
        kind=kind, group_size=g, extras=extras, input_ids=input_ids, attention_mask=attention_mask,
        completion_mask=completion_mask, layout=layout, position_ids=position_ids, seq_lens=seq_lens,
        prompt_lens=prompt_lens, strength=strength,
        weight=torch.tensor([ex.weight for ex in examples], dtype=torch.float32),
        labels=torch.tensor([bool(ex.label) for ex in examples]) if kind == "unpaired" else None,
        ties=torch.tensor([bool(ex.tie) for ex in examples]) if kind == "pair" else None,
        scores=scores, user_ids=[ex.user_id for ex in examples], example_ids=[ex.id for ex in examples],
        score_names=examples[0].score_names if kind == "rating" else None,
    )
