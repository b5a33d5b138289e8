"""Shared fixtures: a tiny in-process tokenizer and a tiny Llama (see ``prefkit.testing``).

No global state is changed here (thread counts, default dtype, seeds): each test that needs
randomness seeds its own generator, and the builders below leave the global RNG alone.
"""

from __future__ import annotations

import copy

import pytest

from prefkit.testing import tiny_llama, tiny_tokenizer


@pytest.fixture
def tokenizer():
    """A fresh copy of the default tiny tokenizer (BOS, ``<eos>``-appending chat template)."""
    return copy.deepcopy(tiny_tokenizer())


@pytest.fixture
def model(tokenizer):
    """A tiny 2-layer Llama (hidden 32) whose vocabulary matches ``tokenizer``; new per test."""
    return tiny_llama(len(tokenizer))
