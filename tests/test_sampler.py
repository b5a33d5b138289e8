"""The built-in sampler (``prefkit.online.sampler``): exact against ``model.generate`` and the log-prob
engine, reproducible, and sampling the distributions it claims (checked against exact probabilities)."""

from __future__ import annotations

import copy

import pytest
import torch

from prefkit.data.batch import Batch
from prefkit.errors import ConfigError
from prefkit.models.logprobs import sequence_logps
from prefkit.online import Sampler, SamplingSettings, TorchSampler
from prefkit.testing import tiny_llama, tiny_tokenizer

GREEDY = SamplingSettings(temperature=0, max_new_tokens=10)
TEXTS = ["The cat likes", "Hello", "Human: What is two plus two?\n\nAssistant:", "a dog sees the ball and"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(len(tok), seed=0)


@pytest.fixture(scope="module")
def peaky(tok):
    """A tiny Llama whose output layer is scaled up, so next-token distributions are far from uniform
    (the random init gives near-uniform ones, which would make the distribution tests weak)."""
    m = copy.deepcopy(tiny_llama(len(tok), seed=3))
    with torch.no_grad():
        m.lm_head.weight.mul_(40.0)
    return m


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t)["input_ids"] for t in TEXTS]  # lengths differ: left padding matters


def _next_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


# -- (a) greedy: batched == unbatched == model.generate -----------------------------------------------


def test_greedy_batched_equals_unbatched_and_generate(model, tok, prompts):
    sampler = TorchSampler(model, tok)
    batched = sampler.sample(prompts, GREEDY)
    assert [c.prompt_index for c in batched] == list(range(len(prompts)))
    for i, p in enumerate(prompts):
        alone = sampler.sample([p], GREEDY)[0]
        assert alone.token_ids == batched[i].token_ids
        assert alone.policy_logps == pytest.approx(batched[i].policy_logps, abs=1e-5)
        assert batched[i].logps == (0.0,) * len(batched[i])  # greedy samples from a point mass

    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=GREEDY.max_new_tokens,
                         pad_token_id=0, eos_token_id=tok.eos_token_id)[:, width:].tolist()
    for c, ref in zip(batched, out):
        assert tuple(ref[:len(c)]) == c.token_ids
        assert all(t == 0 for t in ref[len(c):])  # generate also stopped (then padded)


def test_greedy_batched_with_early_finishers_equals_unbatched(model, tok, prompts):
    """Rows that end early leave the batch (and their KV cache rows): the others are unaffected."""
    full = TorchSampler(model, tok).sample(prompts, GREEDY)
    eos = full[1].token_ids[2]  # a token prompt 1 emits at step 3: row 1 ends there
    sampler = TorchSampler(model, tok, eos_token_ids=[eos])
    batched = sampler.sample(prompts, GREEDY, n=2)
    assert batched[2].stop_reason == "eos" and batched[2].token_ids[-1] == eos and len(batched[2]) <= 3
    for i, p in enumerate(prompts):
        alone = sampler.sample([p], GREEDY)[0]
        for c in batched.group(i):
            assert c.token_ids == alone.token_ids and c.stop_reason == alone.stop_reason
            assert c.policy_logps == pytest.approx(alone.policy_logps, abs=1e-5)


# -- (b) log-probs == the log-prob engine, teacher-forced ---------------------------------------------


def _engine_token_logps(model, prompt_ids: list[list[int]], completions) -> list[list[float]]:
    seqs = [p + list(c.token_ids) for p, c in zip(prompt_ids, completions)]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    comp = torch.tensor([[0] * len(p) + [1] * len(c) + [0] * (width - len(p) - len(c))
                         for p, c in zip(prompt_ids, completions)])
    batch = Batch(kind="unpaired", group_size=1, input_ids=ids, attention_mask=attn, completion_mask=comp)
    with torch.no_grad():
        out = sequence_logps(model, batch, token_logps=True)
    return [out.token_logps[i, len(p):len(p) + len(c)].tolist() for i, (p, c) in enumerate(zip(prompt_ids, completions))]


def test_logps_equal_teacher_forced_engine(model, tok, prompts):
    settings = SamplingSettings(temperature=1.0, max_new_tokens=12, seed=5)
    batch = TorchSampler(model, tok).sample(prompts, settings, n=3)
    expanded = [prompts[c.prompt_index] for c in batch]
    engine = _engine_token_logps(model, expanded, batch.completions)
    for c, ref in zip(batch, engine):
        assert c.logps == pytest.approx(ref, abs=1e-4)
        assert c.policy_logps == pytest.approx(ref, abs=1e-4)
        assert c.reference_logps is None


def test_logps_under_top_k_are_renormalised_and_policy_logps_stay_raw(model, tok, prompts):
    batch = TorchSampler(model, tok).sample(prompts, SamplingSettings(top_k=5, max_new_tokens=8, seed=1))
    engine = _engine_token_logps(model, prompts, batch.completions)
    for c, ref in zip(batch, engine):
        assert c.policy_logps == pytest.approx(ref, abs=1e-4)
        assert all(s > p for s, p in zip(c.logps, c.policy_logps))  # mass of 5 tokens renormalised to 1


def test_peft_wrapped_policy_samples_with_adapters_and_keeps_its_mode(tok, prompts):
    peft = pytest.importorskip("peft")
    base = tiny_llama(len(tok), seed=1)
    lora = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                  init_lora_weights=False))
    lora.train()
    batch = TorchSampler(lora, tok).sample(prompts, SamplingSettings(max_new_tokens=6, seed=2))
    assert lora.training  # mode restored
    lora.eval()
    engine = _engine_token_logps(lora, prompts, batch.completions)
    base_engine = _engine_token_logps(base, prompts, batch.completions)
    for c, ref, plain in zip(batch, engine, base_engine):
        assert c.policy_logps == pytest.approx(ref, abs=1e-4)
        assert c.policy_logps != pytest.approx(plain, abs=1e-4)  # the adapters were active


# -- (c) seeds and resumable RNG state ----------------------------------------------------------------


def test_same_seed_same_samples_different_seed_different(model, tok, prompts):
    sampler = TorchSampler(model, tok)
    a = sampler.sample(prompts, SamplingSettings(max_new_tokens=8, seed=11), n=2)
    b = sampler.sample(prompts, SamplingSettings(max_new_tokens=8, seed=11), n=2)
    c = sampler.sample(prompts, SamplingSettings(max_new_tokens=8, seed=12), n=2)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    assert [x.token_ids for x in TorchSampler(model, tok, seed=3).sample(prompts, SamplingSettings(max_new_tokens=8))] \
        == [x.token_ids for x in TorchSampler(model, tok, seed=3).sample(prompts, SamplingSettings(max_new_tokens=8))]


def test_generator_state_resumes_the_identical_stream(model, tok, prompts):
    settings = SamplingSettings(max_new_tokens=8, top_p=0.9)
    sampler = TorchSampler(model, tok, seed=7)
    sampler.sample(prompts, settings)
    state = copy.deepcopy(sampler.state_dict())
    first = [sampler.sample(prompts, settings, n=2) for _ in range(2)]
    sampler.sample(prompts, SamplingSettings(max_new_tokens=8, seed=99))  # a seeded call leaves the stream alone
    third = sampler.sample(prompts, settings)

    fresh = TorchSampler(model, tok, seed=123)
    fresh.load_state_dict(state)
    again = [fresh.sample(prompts, settings, n=2) for _ in range(2)]
    assert [[c.token_ids for c in b] for b in first] == [[c.token_ids for c in b] for b in again]
    assert [c.token_ids for c in third] == [c.token_ids for c in fresh.sample(prompts, settings)]
    assert [c.token_ids for c in first[0]] != [c.token_ids for c in first[1]]


# -- (d) degenerate truncations equal greedy ----------------------------------------------------------


@pytest.mark.parametrize("settings", [SamplingSettings(top_k=1, max_new_tokens=10, seed=0),
                                      SamplingSettings(top_p=1e-6, max_new_tokens=10, seed=0),
                                      SamplingSettings(top_k=1, temperature=2.0, max_new_tokens=10, seed=0)])
def test_top_k_one_and_tiny_top_p_equal_greedy(model, tok, prompts, settings):
    sampler = TorchSampler(model, tok)
    greedy = sampler.sample(prompts, GREEDY, n=2)
    got = sampler.sample(prompts, settings, n=2)
    assert [c.token_ids for c in got] == [c.token_ids for c in greedy]
    assert all(lp == pytest.approx(0.0, abs=1e-6) for c in got for lp in c.logps)  # a point mass


# -- (e) stop strings, EOS and max_new_tokens ---------------------------------------------------------


@pytest.mark.parametrize("span", [1, 2, 3])
def test_stop_string_cuts_text_and_marks_finished(model, tok, prompts, span):
    """A stop string spanning ``span`` tokens ends the completion at the token that completes it (the
    same seed replays the same draws up to there)."""
    sampler = TorchSampler(model, tok, eos_token_ids=[])
    full = sampler.sample(prompts[:1], SamplingSettings(max_new_tokens=48, seed=0))[0]
    assert not full.finished and full.stop_reason == "length" and len(full) == 48
    ids = full.token_ids

    def candidate(k: int) -> str | None:
        """The text of tokens k..k+span-1 if it first appears, whole, with token k+span-1."""
        piece = tok.decode(ids[k:k + span])
        ok = piece.strip() and "\ufffd" not in piece and piece in tok.decode(ids[:k + span]) \
            and piece not in tok.decode(ids[:k + span - 1])
        return piece if ok else None

    k = next(k for k in range(2, 48 - span) if candidate(k))
    stop = candidate(k)
    cut = sampler.sample(prompts[:1], SamplingSettings(max_new_tokens=48, seed=0, stop=(stop, "never-there")))[0]
    assert cut.finished and cut.stop_reason == "stop"
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.token_ids == ids[:k + span]  # ends with the token that completed the stop string
    assert cut.logps == full.logps[:k + span]


def test_eos_ends_a_completion_and_is_kept_in_ids_not_text(model, tok, prompts):
    full = TorchSampler(model, tok, eos_token_ids=[]).sample(prompts[:1], GREEDY)[0]
    eos = full.token_ids[3]
    got = TorchSampler(model, tok, eos_token_ids=[eos]).sample(prompts[:1], GREEDY)[0]
    first = full.token_ids.index(eos)
    assert got.token_ids == full.token_ids[:first + 1] and got.finished and got.stop_reason == "eos"
    assert got.text == tok.decode(full.token_ids[:first], skip_special_tokens=True)


def test_max_new_tokens_reached_is_not_finished(model, tok, prompts):
    batch = TorchSampler(model, tok, eos_token_ids=[]).sample(prompts, SamplingSettings(max_new_tokens=5), n=2)
    assert len(batch) == 8 and batch.num_tokens() == 40
    assert all(len(c) == 5 and not c.finished and c.stop_reason == "length" for c in batch)
    assert batch.truncated_fraction() == 1.0 and batch.num_prompts == 4


# -- (f) the sampled distribution is softmax(logits / T), exactly -------------------------------------

N_DRAWS = 60_000


def _draws(sampler: TorchSampler, prompt: list[int], settings: SamplingSettings):
    """N_DRAWS single-token completions, in chunks (one (n, V) logits tensor each)."""
    out = []
    for _ in range(N_DRAWS // 20_000):
        out.extend(sampler.sample([prompt], settings, n=20_000))
    return out


def _check_frequencies(tokens: list[int], probs: torch.Tensor) -> None:
    """Empirical frequencies of ``tokens`` against exact ``probs`` (V,).

    - A token of probability 0 (cut by top-k/top-p) is never drawn.
    - Pearson's chi-square over the cells with expected count >= 5 (the rest pooled into one cell) has,
      for a correct sampler, asymptotically the chi2(df) law; its exact tail
      ``P(chi2(df) >= x) = Q(df/2, x/2)`` (regularised upper incomplete gamma) must stay above 1e-6.
    - Each cell with expected count >= 25 is Binomial(N, p), near normal: |f − p| beyond 6 standard
      errors has probability < 2e-9 per cell, < 1e-6 over the vocabulary by the union bound. (Cells
      with a smaller expected count are covered by the pooled chi-square cell only: one draw of a token of
      probability 1e-7 is an expected event among hundreds of such tokens, not an error.)

    The draws are seeded, so the test is deterministic; the bounds say it would pass for ~any seed.
    """
    n = len(tokens)
    counts = torch.bincount(torch.tensor(tokens), minlength=probs.numel()).double()
    p = probs.double()
    assert counts[p == 0].sum() == 0
    expected = p * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    chi2 = float((((obs - exp) ** 2)[keep] / exp[keep]).sum())
    df = int(keep.sum()) - 1
    assert df >= 2
    tail = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(chi2 / 2, dtype=torch.float64)))
    assert tail > 1e-6, (chi2, df, tail)
    cells = expected >= 25
    z = ((counts - expected).abs() / torch.sqrt(expected * (1 - p)).clamp_min(1e-12))[cells]
    assert float(z.max()) < 6.0


@pytest.mark.parametrize("settings", [SamplingSettings(temperature=0.7, max_new_tokens=1, seed=None),
                                      SamplingSettings(temperature=1.3, top_k=40, max_new_tokens=1),
                                      SamplingSettings(temperature=1.0, top_p=0.8, max_new_tokens=1)])
def test_single_token_frequencies_match_the_exact_distribution(peaky, tok, prompts, settings):
    from prefkit.online.sampler import sampling_logits

    prompt = prompts[2]
    batch = _draws(TorchSampler(peaky, tok, eos_token_ids=[], seed=4), prompt, settings)
    logits = _next_logits(peaky, prompt)
    exact = torch.softmax(sampling_logits(torch.log_softmax(logits, -1)[None], settings)[0], -1)
    if settings.top_k == 0 and settings.top_p == 1.0:  # independent of sampling_logits: softmax(logits / T)
        assert torch.allclose(exact, torch.softmax(logits / settings.temperature, -1), atol=1e-6)
    if settings.top_k:
        assert int((exact > 0).sum()) == settings.top_k
    tokens = [c.token_ids[0] for c in batch]
    _check_frequencies(tokens, exact)
    got = torch.tensor([c.logps[0] for c in batch[:200]])
    assert torch.allclose(got, exact.log()[tokens[:200]], atol=1e-4)


# -- (g) the Nash-MD geometric mixture ----------------------------------------------------------------


def test_mixture_single_step_distribution_is_the_normalised_geometric_mixture(peaky, tok, prompts):
    reference = copy.deepcopy(tiny_llama(len(tok), seed=8))
    with torch.no_grad():
        reference.lm_head.weight.mul_(40.0)
    beta = 0.3
    prompt = prompts[0]
    sampler = TorchSampler(peaky, tok, mixture=(reference, beta), eos_token_ids=[], seed=9)
    batch = _draws(sampler, prompt, SamplingSettings(max_new_tokens=1))
    pi = torch.softmax(_next_logits(peaky, prompt).double(), -1)
    ref = torch.softmax(_next_logits(reference, prompt).double(), -1)
    exact = pi ** (1 - beta) * ref ** beta
    exact = exact / exact.sum()
    tokens = [c.token_ids[0] for c in batch]
    _check_frequencies(tokens, exact.float())
    first = batch[:200]
    assert torch.allclose(torch.tensor([c.logps[0] for c in first], dtype=torch.float64),
                          exact.log()[tokens[:200]], atol=1e-4)
    assert torch.allclose(torch.tensor([c.policy_logps[0] for c in first], dtype=torch.float64),
                          pi.log()[tokens[:200]], atol=1e-4)
    assert torch.allclose(torch.tensor([c.reference_logps[0] for c in first], dtype=torch.float64),
                          ref.log()[tokens[:200]], atol=1e-4)
    assert sum(abs(float(exact[t]) - float(pi[t])) for t in range(len(pi))) > 0.1  # the mixture differs


def test_mixture_endpoints_and_multi_step_logps(model, tok, prompts):
    reference = tiny_llama(len(tok), seed=8)
    greedy_pi = TorchSampler(model, tok).sample(prompts, GREEDY)
    greedy_ref = TorchSampler(reference, tok).sample(prompts, GREEDY)  # the reference samples the same way
    at0 = TorchSampler(model, tok, mixture=(reference, 0.0)).sample(prompts, GREEDY)
    at1 = TorchSampler(model, tok, mixture=(reference, 1.0)).sample(prompts, GREEDY)
    assert [c.token_ids for c in at0] == [c.token_ids for c in greedy_pi]
    assert [c.token_ids for c in at1] == [c.token_ids for c in greedy_ref]

    batch = TorchSampler(model, tok, mixture=(reference, 0.5)).sample(prompts, SamplingSettings(max_new_tokens=8, seed=3))
    pol = _engine_token_logps(model, prompts, batch.completions)
    ref = _engine_token_logps(reference, prompts, batch.completions)
    for c, p, r in zip(batch, pol, ref):  # both KV caches stayed in lock step over several tokens
        assert c.policy_logps == pytest.approx(p, abs=1e-4)
        assert c.reference_logps == pytest.approx(r, abs=1e-4)


# -- settings and protocol ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1),
                                 dict(max_new_tokens=0), dict(stop=("",)), dict(seed="x")])
def test_bad_settings_are_one_line_config_errors(bad):
    with pytest.raises(ConfigError) as err:
        SamplingSettings(**bad)
    assert "\n" not in str(err.value)


def test_settings_from_dict_rejects_unknown_keys_and_takes_a_single_stop_string():
    with pytest.raises(ConfigError, match="temperature"):
        SamplingSettings.from_dict({"temprature": 0.5})
    assert SamplingSettings.from_dict({"stop": "\n"}).stop == ("\n",)


def test_torch_sampler_is_a_sampler_and_rejects_bad_mixture(model, tok):
    assert isinstance(TorchSampler(model, tok), Sampler)
    with pytest.raises(ConfigError):
        TorchSampler(model, tok, mixture=(model, 1.5))
    assert len(TorchSampler(model, tok).sample([], GREEDY)) == 0


def test_the_frequency_check_catches_a_slightly_wrong_temperature(peaky, tok, prompts):
    """The bounds of ``_check_frequencies`` are tight enough to matter: draws at T = 0.7 fail against
    softmax(logits / 0.75)."""
    settings = SamplingSettings(temperature=0.7, max_new_tokens=1)
    tokens = [c.token_ids[0] for c in _draws(TorchSampler(peaky, tok, eos_token_ids=[], seed=4), prompts[2], settings)]
    logits = _next_logits(peaky, prompts[2])
    _check_frequencies(tokens, torch.softmax(logits / 0.7, -1))
    with pytest.raises(AssertionError):
        _check_frequencies(tokens, torch.softmax(logits / 0.75, -1))
