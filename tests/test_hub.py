"""Hub ids for models, tokenizers and datasets, served offline from a temporary cache laid out as the hub's.

The model cache is built as ``huggingface_hub`` lays it out (``models--org--name/{blobs,refs,snapshots}``),
with ``HF_HUB_OFFLINE=1``: ``snapshot_download`` resolves ids and revisions for real, without a network.
The dataset cache's Arrow layout is ``datasets``' own; the dataset tests build only the folder the offline
check looks for and replace ``datasets.load_dataset`` with a stand-in that records its arguments.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from prefkit.cli.main import main
from prefkit.data.readers import load
from prefkit.data.writers import write_jsonl
from prefkit.errors import ConfigError, DataError
from prefkit.models import load as model_load
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config

MAIN, V2 = "a" * 40, "b" * 40
QUIET = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "encode.max_length=128"]


def _save_model(folder: Path, seed: int) -> None:
    tok = copy.deepcopy(tiny_tokenizer())
    tiny_llama(len(tok), seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)


def _first_weight(model: torch.nn.Module) -> torch.Tensor:
    return next(iter(model.state_dict().values()))


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """A hub cache holding ``org/tiny`` at ``main`` (seed 0) and at tag ``v2`` (seed 1); offline."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--org--tiny"
    for commit, seed in ((MAIN, 0), (V2, 1)):
        _save_model(repo / "snapshots" / commit, seed)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v2").write_text(V2)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


def test_hub_id_syntax(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert model_load.hub_id("Qwen/Qwen2-0.5B") == ("Qwen/Qwen2-0.5B", None)
    assert model_load.hub_id("org/name@v1.0") == ("org/name", "v1.0")
    assert model_load.hub_id("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    for local in ("model", "./org/name", "/abs/org/name", "a/b/c", "org/model.gguf", "~/org", Path("org/name")):
        assert model_load.hub_id(local) is None, local
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert model_load.hub_id("org/name") is None  # a folder of that name exists: it is a local path


def test_load_model_and_tokenizer_from_hub_cache(hub) -> None:
    model = model_load.load_model("org/tiny")
    tok = model_load.load_tokenizer("org/tiny")
    assert _first_weight(model).equal(_first_weight(tiny_llama(len(tok), seed=0)))
    assert tok("hello world")["input_ids"]
    snapshot = model_load.check_model_path("org/tiny")
    assert snapshot == hub / "models--org--tiny" / "snapshots" / MAIN


@pytest.mark.parametrize("revision", ["v2", V2])
def test_revision(hub, revision) -> None:
    tok = tiny_tokenizer()
    model = model_load.load_model(f"org/tiny@{revision}")
    assert _first_weight(model).equal(_first_weight(tiny_llama(len(tok), seed=1)))
    assert not _first_weight(model).equal(_first_weight(tiny_llama(len(tok), seed=0)))


def test_local_folder_of_the_same_name_wins(hub, tmp_path) -> None:
    _save_model(tmp_path / "org" / "tiny", seed=2)
    model = model_load.load_model("org/tiny")
    assert _first_weight(model).equal(_first_weight(tiny_llama(len(tiny_tokenizer()), seed=2)))


def test_missing_id_is_one_line_at_parse_time(hub, tmp_path, monkeypatch, capsys) -> None:
    write_jsonl(tiny_pairs(4), tmp_path / "pairs.jsonl")
    loads = model_load.load_count
    for key in ("model.path", "model.tokenizer", "reference.path", "lora.adapter"):
        overrides = [f"model.path={'org/tiny' if key != 'model.path' else 'Qwen/Qwen2-0.5B'}",
                     f"data.train={tmp_path / 'pairs.jsonl'}", f"output.dir={tmp_path / 'run'}"]
        if key != "model.path":
            overrides.append(f"{key}=Qwen/Qwen2-0.5B")
        with pytest.raises(ConfigError) as err:
            load_config(None, overrides)
        message = str(err.value)
        assert message == (f"{key} 'Qwen/Qwen2-0.5B' is not in the local Hugging Face cache ({hub}) and the hub "
                           "is offline (HF_HUB_OFFLINE=1); download it first (hf download Qwen/Qwen2-0.5B) or "
                           "pass a local folder"), message
    with pytest.raises(ConfigError, match=r"'org/tiny' at revision 'nope' is not in the local"):
        load_config(None, ["model.path=org/tiny@nope", f"data.train={tmp_path / 'pairs.jsonl'}"])
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"model": {"path": "Qwen/Qwen2-0.5B"},
                                                       "data": {"train": str(tmp_path / "pairs.jsonl")}}))
    assert main(["train", "--config", str(tmp_path / "job.yaml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.path 'Qwen/Qwen2-0.5B' is not in the local Hugging Face cache") and "\n" not in err
    assert model_load.load_count == loads  # refused before any model loaded


def test_cached_snapshot_is_checked_at_parse_time(hub, tmp_path) -> None:
    (hub / "models--org--tiny" / "snapshots" / V2 / "model.safetensors").unlink()
    write_jsonl(tiny_pairs(4), tmp_path / "pairs.jsonl")
    with pytest.raises(ConfigError, match=r"^model.path 'org/tiny@v2' \(hub snapshot .*\) holds no model.safetensors"):
        load_config(None, ["model.path=org/tiny@v2", f"data.train={tmp_path / 'pairs.jsonl'}"])


def test_not_cached_online_is_left_to_the_load(hub, tmp_path, monkeypatch) -> None:
    """Online, a hub id not in the cache passes the parse-time check (the load downloads it); nothing is
    fetched at parse time."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub

    calls = []
    real = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        calls.append(kwargs["local_files_only"])
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    write_jsonl(tiny_pairs(4), tmp_path / "pairs.jsonl")
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("HF_HUB_OFFLINE was set when huggingface_hub was imported")
    load_config(None, ["model.path=org/absent", f"data.train={tmp_path / 'pairs.jsonl'}"])
    assert calls == [True, True]  # model and its tokenizer: cache look-ups only


def test_dpo_run_with_a_hub_model(hub, tmp_path, capfd) -> None:
    write_jsonl(tiny_pairs(8), tmp_path / "pairs.jsonl")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "model": {"path": "org/tiny"}, "data": {"train": str(tmp_path / "pairs.jsonl")},
        "loss": {"name": "dpo", "beta": 0.5}, "train": {"max_steps": 2, "batch_size": 4},
        "reference": {"cache_dir": str(tmp_path / "refcache")}, "output": {"dir": str(tmp_path / "run")}}))
    assert main(["train", "--config", str(tmp_path / "job.yaml"), *QUIET]) == 0
    assert (tmp_path / "run" / "model").is_dir()
    assert "Loading weights" not in capfd.readouterr().err  # no weight-loading bars (policy, reference)


def test_quiet_loading_restores_the_progress_bar_setting(hub) -> None:
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        model_load.load_model("org/tiny")
        assert hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        model_load.load_model("org/tiny")
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


# ---- datasets: the offline check is real; datasets.load_dataset is replaced (see the module docstring) ----

@pytest.fixture
def fake_load_dataset(monkeypatch):
    import datasets

    calls: list[tuple[str, dict]] = []
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in tiny_pairs(8)]

    def fake(repo, **kwargs):
        calls.append((repo, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return calls


def _cache_dataset(hub: Path, repo: str) -> None:
    (hub.parent / "datasets" / repo.replace("/", "___") / "default" / "0.0.0" / "abc123").mkdir(parents=True)


def test_hub_dataset_is_read_through_load_dataset(hub, fake_load_dataset) -> None:
    _cache_dataset(hub, "org/prefs")
    records = list(load("org/prefs@v1:test"))
    assert len(records) == 8 and records[0].chosen
    repo, kwargs = fake_load_dataset[0]
    assert repo == "org/prefs" and kwargs["split"] == "test" and kwargs["revision"] == "v1"
    assert kwargs["cache_dir"] == str(hub.parent / "datasets")
    list(load("org/prefs"))
    assert fake_load_dataset[1][1]["split"] == "train" and fake_load_dataset[1][1]["revision"] is None


def test_hub_dataset_not_cached_offline_is_one_line(hub, fake_load_dataset, tmp_path) -> None:
    message = (f"dataset 'org/absent' is not in the local Hugging Face datasets cache ({hub.parent / 'datasets'}) "
               "and the hub is offline (HF_HUB_OFFLINE=1); download it first or pass a local file")
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.path=org/tiny", "data.train=org/absent:train"])
    assert str(err.value) == f"data.train {message}"
    with pytest.raises(DataError) as derr:
        list(load("org/absent"))
    assert str(derr.value) == f"org/absent: {message}"
    assert fake_load_dataset == []  # nothing was asked of datasets


def test_hub_dataset_media_columns_are_still_refused(hub, monkeypatch) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"], "img": [None]},
                                    features=datasets.Features({"prompt": datasets.Value("string"),
                                                                "chosen": datasets.Value("string"),
                                                                "rejected": datasets.Value("string"),
                                                                "img": datasets.Image()}))
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, **kwargs: ds)
    _cache_dataset(hub, "org/pics")
    with pytest.raises(DataError, match="Image feature"):
        list(load("org/pics"))


def test_dpo_run_with_hub_model_and_hub_dataset(hub, fake_load_dataset, tmp_path) -> None:
    _cache_dataset(hub, "org/prefs")
    cfg = load_config(None, ["model.path=org/tiny", "data.train=org/prefs", "train.max_steps=1",
                             "train.batch_size=4", f"output.dir={tmp_path / 'run'}",
                             f"reference.cache_dir={tmp_path / 'refcache'}", *QUIET])
    from prefkit.train.run import run

    metrics = run(cfg)
    assert json.dumps(metrics) and fake_load_dataset


def test_reward_backbone_and_lora_adapter_from_the_hub(hub) -> None:
    from prefkit.models.heads import RewardModelConfig
    from prefkit.models.reward import RewardModel

    rm = RewardModel.from_backbone("org/tiny", RewardModelConfig())
    assert rm.tokenizer is not None and rm.backbone.config.hidden_size == 32
    adapter = hub / "models--org--adapter"
    model_load.add_lora(tiny_llama(len(tiny_tokenizer())), r=4, alpha=8).save_pretrained(adapter / "snapshots" / MAIN)
    (adapter / "refs").mkdir()
    (adapter / "refs" / "main").write_text(MAIN)
    assert model_load.check_adapter_dir("org/adapter") == adapter / "snapshots" / MAIN
    wrapped = model_load.add_lora(model_load.load_model("org/tiny"), r=4, alpha=8, adapter="org/adapter")
    assert model_load.is_peft(wrapped)
    with pytest.raises(ConfigError, match=r"^lora.adapter 'org/tiny' \(hub snapshot .*\) is not a LoRA adapter"):
        model_load.check_adapter_dir("org/tiny")
