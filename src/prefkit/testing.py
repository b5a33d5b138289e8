"""Offline builders for tests: a tiny tokenizer, a tiny Llama and small synthetic feedback records.

Everything here is built in-process in milliseconds, with no network and no files:

- :func:`tiny_tokenizer` trains a byte-level BPE tokenizer (any text encodes, no unknown tokens) on
  a built-in corpus and wraps it as a ``transformers`` fast tokenizer with ``<bos>``/``<eos>``/``<pad>``
  and an optional chat template;
- :func:`tiny_llama` builds a randomly initialised ``LlamaForCausalLM`` (fp32, eager attention),
  deterministic for a given seed and leaving the global RNG untouched;
- :func:`tiny_pairs`, :func:`tiny_chat_pairs`, :func:`tiny_rankings`, :func:`tiny_unpaired` make small
  deterministic record lists;
- :func:`token_world` builds a one-token world (a tiny LM choosing one of K action tokens with an exactly
  known reference distribution) for bandits and games with computable answers.

Tokenizers are cached by arguments (``functools.lru_cache``): treat them as read-only.

``prefkit testing tiny-model DIR`` (``prefkit.cli.testing``) writes the tiny model and tokenizer to a
folder, with a small pairs file and a job, for trying the CLI offline. Guide: ``docs/testing.md``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from prefkit.data.records import Pair, Ranking, Unpaired

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# The default chat template: an optional BOS, then ``<|role|>content`` per message, with the EOS token
# closing every assistant turn (like Llama-3/ChatML templates that append an end-of-turn token).
DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_SUBJECTS = ["the cat", "a dog", "the model", "my friend", "the teacher", "a robot", "the river",
             "our team", "the bird", "a student"]
_VERBS = ["likes", "sees", "answers", "helps", "writes", "reads", "follows", "finds", "builds", "moves"]
_OBJECTS = ["the ball", "a question", "the book", "a letter", "the answer", "the road", "a song",
            "the garden", "a small box", "the river bank"]
_GOOD = ["Sure, here is a clear and helpful answer.", "Yes, that is correct and kind.",
         "Here are the steps, one at a time.", "Thank you for asking; the answer is four."]
_BAD = ["No.", "I will not say.", "That is wrong and rude.", "Whatever, figure it out yourself."]

_CORPUS = [
    "Human: What is two plus two?\n\nAssistant: Two plus two is four.",
    "Human: Can you help me write a letter?\n\nAssistant: Sure, here is a short letter.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/\\|@#$%^&*-_+=~`",
    "Please answer the question. Thank you for asking. Here are the steps, one at a time.",
    "I am sorry, I cannot help with that. That is wrong and rude.",
    *(f"{s.capitalize()} {v} {o}." for s in _SUBJECTS for v in _VERBS[:4] for o in _OBJECTS[:3]),
    *_GOOD,
    *_BAD,
]


@functools.lru_cache(maxsize=16)
def tiny_tokenizer(*, bos: bool = True, chat_template: str | None | Literal["default"] = "default",
                   vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in-process, wrapped as a ``transformers`` fast tokenizer.

    Special tokens: ``<pad>`` (id 0), ``<bos>`` (1), ``<eos>`` (2), ``<|system|>``, ``<|user|>``,
    ``<|assistant|>``. With ``bos=True`` it behaves like Llama tokenizers: ``bos_token`` is set and
    encoding with ``add_special_tokens=True`` prepends ``<bos>``; with ``bos=False`` there is no BOS
    token at all (``bos_token_id is None``) and nothing is prepended. It never appends EOS itself.

    ``chat_template="default"`` installs :data:`DEFAULT_CHAT_TEMPLATE` (which starts with the BOS
    token when there is one and appends ``<eos>`` after each assistant turn); a string installs that
    Jinja template; ``None`` leaves the tokenizer without a chat template.

    Cached by arguments: do not mutate the returned object (``copy.deepcopy`` it first).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    if bos:
        bos_id = tok.token_to_id(BOS)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    template = DEFAULT_CHAT_TEMPLATE if chat_template == "default" else chat_template
    kwargs = {"bos_token": BOS} if bos else {}
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS), **kwargs,
    )
    if not bos:
        wrapped.bos_token = None
    wrapped.chat_template = template
    return wrapped


def tiny_llama(vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
               tie_embeddings: bool = False, max_positions: int = 1024,
               pad_token_id: int | None = 0, bos_token_id: int | None = 1,
               eos_token_id: int | None = 2) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` (fp32, eager attention, eval mode).

    Deterministic: the same arguments give the same weights. The global torch RNG is left untouched
    (initialisation runs under ``torch.random.fork_rng``). Token ids default to :func:`tiny_tokenizer`'s.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=tie_embeddings,
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.float().eval()


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}."


def tiny_pairs(n: int = 8, seed: int = 0) -> list[Pair]:
    """``n`` plain-text pairs: prompt ``"Question: <sentence>\\nAnswer:"``, a polite chosen answer and a
    curt rejected one (each completion starts with a space). Ids ``pair-<i>``; every third has a
    ``strength`` margin."""
    from prefkit.data.records import Pair

    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(Pair(
            prompt=f"Question: {_sentence(rng)}\nAnswer:",
            chosen=" " + rng.choice(_GOOD), rejected=" " + rng.choice(_BAD),
            id=f"pair-{i}", strength=(1.0 + i % 3) if i % 3 == 0 else None,
        ))
    return out


def tiny_chat_pairs(n: int = 8, seed: int = 0, *, system: bool = False) -> list[Pair]:
    """``n`` conversational pairs: a user message (optionally after a system message) and one
    assistant message per completion. Ids ``chat-<i>``."""
    from prefkit.data.records import Message, Pair

    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt: tuple[Message, ...] = (Message("user", f"Tell me: {_sentence(rng)}"),)
        if system:
            prompt = (Message("system", "Be helpful."), *prompt)
        out.append(Pair(
            prompt=prompt,
            chosen=(Message("assistant", rng.choice(_GOOD)),),
            rejected=(Message("assistant", rng.choice(_BAD)),),
            id=f"chat-{i}",
        ))
    return out


def tiny_rankings(n: int = 4, k: int = 4, seed: int = 0) -> list[Ranking]:
    """``n`` plain-text rankings of ``k`` responses, best first, with descending scores."""
    from prefkit.data.records import Ranking

    rng = random.Random(seed)
    pool = _GOOD + _BAD
    out = []
    for i in range(n):
        responses = tuple(" " + r for r in rng.sample(pool, k))
        out.append(Ranking(
            prompt=f"Question: {_sentence(rng)}\nAnswer:", responses=responses,
            scores=tuple(float(k - j) for j in range(k)), id=f"rank-{i}",
        ))
    return out


def tiny_unpaired(n: int = 8, seed: int = 0) -> list[Unpaired]:
    """``n`` plain-text unpaired examples alternating desirable (even i) / undesirable (odd i)."""
    from prefkit.data.records import Unpaired

    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = i % 2 == 0
        out.append(Unpaired(
            prompt=f"Question: {_sentence(rng)}\nAnswer:",
            response=" " + rng.choice(_GOOD if good else _BAD), desirable=good, id=f"unpaired-{i}",
        ))
    return out


@dataclass
class TokenWorld:
    """A one-token world (bandits and games): see :func:`token_world`."""

    model: LlamaForCausalLM
    """The tiny Llama; only ``lm_head`` is trainable, so each action's logit moves on its own."""
    tokenizer: PreTrainedTokenizerFast
    prompt: str
    """The one prompt (``"ask"``)."""
    actions: tuple[str, ...]
    """The action texts, one token each."""
    action_ids: tuple[int, ...]
    reference_probs: tuple[float, ...]
    """The model's exact first-token probabilities of the actions as built (sum ≈ 1)."""

    def probs(self, model: Any = None) -> Any:
        """(K,) exact probability of each action as the first completion token after the prompt."""
        import torch

        model = self.model if model is None else model
        ids = self.tokenizer(self.prompt)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].float()
        return logits.softmax(-1)[list(self.action_ids)]


def token_world(actions: int | Sequence[str] = 100, reference_probs: Sequence[float] | None = None, *,
                hidden: int = 32, gap: float = 40.0, seed: int = 0) -> TokenWorld:
    """A tiny causal LM whose response is one token out of K actions, with an exactly known reference.

    The tokenizer is word-level: special tokens, the prompt word ``ask`` and the action words
    (``a0`` … ``a{K-1}``, or the given texts; one token each), no chat template. The model is a
    :func:`tiny_llama` whose output layer is set so that, after the prompt, the first-token distribution
    over the actions is exactly ``reference_probs`` (default uniform) and every other token has a logit
    ``gap`` below the least likely action (so it is never sampled in practice); every parameter but
    ``lm_head`` is frozen, so the policy is a softmax over per-action logits (a tabular policy). Train with
    ``encode.add_eos=false`` and sample with ``max_new_tokens=1``: a completion's log-prob is then the
    action's log-prob, and KL-regularised optima can be computed exactly.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    names = tuple(f"a{i}" for i in range(actions)) if isinstance(actions, int) else tuple(actions)
    if len(names) < 2 or len(set(names)) != len(names) or any(not n or " " in n for n in names):
        raise ValueError("token_world needs at least 2 distinct one-word actions")
    probs = torch.full((len(names),), 1.0 / len(names), dtype=torch.float64) if reference_probs is None \
        else torch.tensor(list(reference_probs), dtype=torch.float64)
    if probs.shape != (len(names),) or bool((probs <= 0).any()) or abs(float(probs.sum()) - 1) > 1e-9:
        raise ValueError("reference_probs must be K positive numbers summing to 1")
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, "ask", *names])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, vocab[BOS])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        additional_special_tokens=list(ROLE_TOKENS))
    model = tiny_llama(len(vocab), hidden=hidden, seed=seed)
    ids = tokenizer("ask")["input_ids"]
    action_ids = tuple(vocab[n] for n in names)
    with torch.no_grad():
        h = model.model(torch.tensor([ids])).last_hidden_state[0, -1].double()  # (H,) the prompt's last state
        target = torch.full((len(vocab),), float(probs.log().min()) - gap, dtype=torch.float64)
        target[list(action_ids)] = probs.log()
        # each row is target_v · h / |h|², so row_v · h = target_v exactly
        model.lm_head.weight.copy_((target[:, None] * h[None, :] / h.dot(h)).float())
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head"))
    world = TokenWorld(model, tokenizer, "ask", names, action_ids, ())
    world.reference_probs = tuple(float(x) for x in world.probs())
    return world
