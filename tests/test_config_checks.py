"""Every config value and path is checked at parse time, before any model loads (issue 11, build item 2).

Each broken config is generated in a temporary folder and must give one ``ConfigError`` line naming the
key, both from ``load_config`` and from ``prefkit train --config FILE`` (exit 1, one line on stderr, no
traceback), with the model loaders patched to fail: nothing may load before the config is checked.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

import prefkit.models.load as model_load
from prefkit.cli.main import main
from prefkit.data.writers import write_jsonl
from prefkit.errors import ConfigError
from prefkit.models.reward import RewardModel
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import TOY, load_config, load_reward_config


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A valid model folder: config.json, model.safetensors and the tokenizer files."""
    root = tmp_path_factory.mktemp("good")
    tok = copy.deepcopy(tiny_tokenizer())
    tiny_llama(len(tok)).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    write_jsonl(tiny_pairs(4), root / "pairs.jsonl")
    return root


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the config was checked")

    for name in ("load_model", "load_tokenizer", "add_lora"):
        monkeypatch.setattr(model_load, name, refuse)
    monkeypatch.setattr(RewardModel, "from_backbone", refuse)
    monkeypatch.setattr(RewardModel, "load", refuse)


def folder(tmp: Path, name: str, files: dict[str, bytes | str], like: Path | None = None) -> str:
    """A folder ``tmp/name`` holding copies of ``like``'s files named in ``files`` (value ``"copy"``), or
    the given contents."""
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    for fname, content in files.items():
        if content == "copy":
            shutil.copy(like / fname, d / fname)
        else:
            (d / fname).write_bytes(content.encode() if isinstance(content, str) else content)
    return str(d)


def model_files(good: Path, **changes: bytes | str | None) -> dict[str, bytes | str]:
    """The good model's files, with some replaced (bytes or text) or left out (None)."""
    files: dict[str, bytes | str] = {f.name: "copy" for f in (good / "model").iterdir()}
    for name, content in changes.items():
        name = name.replace("__", ".")
        if content is None:
            files.pop(name, None)
        else:
            files[name] = content
    return files


def file(tmp: Path, name: str, content: bytes = b"x") -> str:
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_bytes(content)
    return str(tmp / name)


Case = Callable[[Path, Path], list[str]]
"""(tmp, good) -> the overrides that break the valid base config."""

M = "model.safetensors"
CASES: dict[str, tuple[Case, str, str]] = {
    # --- numbers (the optimizer used to raise these after the model loaded) ---
    "lr-nan": (lambda t, g: ["train.lr=.nan"], "train.lr", "finite"),
    "lr-inf": (lambda t, g: ["train.lr=.inf"], "train.lr", "finite"),
    "lr-string-nan": (lambda t, g: ["train.lr=nan"], "train.lr", "finite"),
    "lr-negative": (lambda t, g: ["train.lr=-1e-5"], "train.lr", "> 0"),
    "adam-beta1-1.5": (lambda t, g: ["train.adam_betas=[1.5, 0.999]"], "train.adam_betas[0]", "[0, 1)"),
    "adam-beta2-nan": (lambda t, g: ["train.adam_betas=[0.9, .nan]"], "train.adam_betas[1]", "[0, 1)"),
    "adam-beta2-one": (lambda t, g: ["train.adam_betas=[0.9, 1.0]"], "train.adam_betas[1]", "[0, 1)"),
    "adam-betas-three": (lambda t, g: ["train.adam_betas=[0.9, 0.99, 0.999]"], "train.adam_betas", "expected tuple[float, float]"),
    "weight-decay-negative": (lambda t, g: ["train.weight_decay=-0.1"], "train.weight_decay", ">= 0"),
    "adam-eps-negative": (lambda t, g: ["train.adam_eps=-1e-8"], "train.adam_eps", "> 0"),
    "adam-eps-zero": (lambda t, g: ["train.adam_eps=0"], "train.adam_eps", "> 0"),
    "epochs-nan": (lambda t, g: ["train.epochs=.nan"], "train.epochs", "finite"),
    "epochs-nan-with-max-steps": (lambda t, g: ["train.epochs=.nan", "train.max_steps=5"], "train.epochs", "finite"),
    "max-grad-norm-nan": (lambda t, g: ["train.max_grad_norm=.nan"], "train.max_grad_norm", "finite"),
    "max-grad-norm-zero": (lambda t, g: ["train.max_grad_norm=0"], "train.max_grad_norm", "use null"),
    "max-grad-norm-negative": (lambda t, g: ["train.max_grad_norm=-1"], "train.max_grad_norm", "> 0"),
    "warmup-ratio-nan": (lambda t, g: ["train.warmup_ratio=.nan"], "train.warmup_ratio", "[0, 1)"),
    "seed-negative": (lambda t, g: ["train.seed=-1"], "train.seed", "2^32"),
    "batch-size-fraction": (lambda t, g: ["train.batch_size=1.5"], "train.batch_size", "expected int"),
    "eval-fraction-inf": (lambda t, g: ["data.eval_fraction=.inf"], "data.eval_fraction", "[0, 1)"),
    "lora-alpha-zero": (lambda t, g: ["lora.r=4", "lora.alpha=0"], "lora.alpha", "> 0"),
    "lora-alpha-nan": (lambda t, g: ["lora.r=4", "lora.alpha=.nan"], "lora.alpha", "finite"),
    "lora-dropout-nan": (lambda t, g: ["lora.r=4", "lora.dropout=.nan"], "lora.dropout", "[0, 1)"),
    "ld-dpo-alpha-nan": (lambda t, g: ["loss.ld_dpo_alpha=.nan"], "loss.ld_dpo_alpha", "[0, 1]"),
    "loss-beta-nan": (lambda t, g: ["loss.beta=.nan"], "'beta'", "finite"),
    "encode-max-length": (lambda t, g: ["encode.max_length=1"], "encode", "max_length"),
    "reward-dropout": (lambda t, g: ["reward.dropout=1.5", "loss.name=bradley_terry"], "reward.dropout", "[0, 1)"),
    "reward-gpm-dim-odd": (lambda t, g: ["reward.head=gpm", "reward.gpm_dim=3", "loss.name=bradley_terry"],
                           "reward.gpm_dim", "even"),
    "reward-weights-nan": (lambda t, g: ["reward.weights=[.nan]", "loss.name=bradley_terry"], "reward.weights[0]",
                           "finite"),
    # --- model folders ---
    "model-missing": (lambda t, g: [f"model.path={t / 'nope'}"], "model.path", "not a local folder"),
    "model-hub-id-offline-not-cached": (lambda t, g: ["model.path=HuggingFaceTB/SmolLM2-135M"], "model.path",
                                        "is not in the local Hugging Face cache"),
    "model-empty-folder": (lambda t, g: [f"model.path={folder(t, 'empty', {})}"], "model.path", "no config.json"),
    "model-not-a-model": (lambda t, g: [f"model.path={folder(t, 'notes', {'notes.txt': 'hi'})}"], "model.path",
                          "not a Hugging Face model folder"),
    "model-only-pytorch-bin": (lambda t, g: [f"model.path={folder(t, 'bin', model_files(g, **{M: None}, pytorch_model__bin=b'PK'), g / 'model')}"],
                               "model.path", "holds only pytorch_model.bin; prefkit loads safetensors only"),
    "model-no-weights": (lambda t, g: [f"model.path={folder(t, 'nowts', model_files(g, **{M: None}), g / 'model')}"],
                         "model.path", "holds no model.safetensors"),
    "model-empty-safetensors": (lambda t, g: [f"model.path={folder(t, 'zero', model_files(g, **{M: b''}), g / 'model')}"],
                                "model.path", "not a safetensors file"),
    "model-garbage-safetensors": (lambda t, g: [f"model.path={folder(t, 'junk', model_files(g, **{M: b'x' * 64}), g / 'model')}"],
                                  "model.path", "not a safetensors file"),
    "model-bad-config-json": (lambda t, g: [f"model.path={folder(t, 'badcfg', model_files(g, config__json='{oops'), g / 'model')}"],
                              "model.path", "config.json that is not a JSON object"),
    "model-config-no-model-type": (lambda t, g: [f"model.path={folder(t, 'notype', model_files(g, config__json='{}'), g / 'model')}"],
                                   "model.path", "without a model_type"),
    "model-custom-code": (lambda t, g: [f"model.path={folder(t, 'custom', model_files(g, config__json=json.dumps({'model_type': 'secret_arch', 'auto_map': {'AutoModelForCausalLM': 'modeling.M'}})), g / 'model')}"],
                          "model.path", "never runs custom model code"),
    "model-not-causal": (lambda t, g: [f"model.path={folder(t, 'vit', model_files(g, config__json=json.dumps({'model_type': 'vit'})), g / 'model')}"],
                         "model.path", "no causal-LM class"),
    "model-shard-missing": (lambda t, g: [f"model.path={folder(t, 'shards', model_files(g, **{M: None}, model__safetensors__index__json=json.dumps({'weight_map': {'a.weight': 'model-00001-of-00002.safetensors'}})), g / 'model')}"],
                            "model.path", "lacks model-00001-of-00002.safetensors"),
    "model-shard-escapes": (lambda t, g: [f"model.path={folder(t, 'escape', model_files(g, **{M: None}, model__safetensors__index__json=json.dumps({'weight_map': {'a': '../x.safetensors'}})), g / 'model')}"],
                            "model.path", "not a file name in the folder"),
    "model-no-tokenizer": (lambda t, g: [f"model.path={folder(t, 'notok', model_files(g, tokenizer__json=None, tokenizer_config__json=None), g / 'model')}"],
                           "model.path", "holds no tokenizer files"),
    "model-is-a-text-file": (lambda t, g: [f"model.path={file(t, 'model.txt')}"], "model.path", "is a file"),
    "model-fake-gguf": (lambda t, g: [f"model.path={file(t, 'fake.gguf', b'not gguf at all')}"], "model.path",
                        "not a GGUF file"),
    "model-is-an-adapter": (lambda t, g: [f"model.path={folder(t, 'adapter', {'adapter_config.json': '{}'})}"],
                            "model.path", "holds a LoRA adapter"),
    "model-folder-with-gguf": (lambda t, g: [f"model.path={folder(t, 'ggdir', {'m.gguf': b'GGUF0000'})}"],
                               "model.path", "GGUF file: point at"),
    "reward-backbone-gguf": (lambda t, g: [f"model.path={file(t, 'backbone.gguf', b'GGUF0000')}",
                                           "loss.name=bradley_terry", "reward.head=scalar"], "model.path",
                             "not a model folder"),
    # --- tokenizer folders ---
    "tokenizer-missing": (lambda t, g: [f"model.tokenizer={t / 'nope'}"], "model.tokenizer", "not a local folder"),
    "tokenizer-empty-folder": (lambda t, g: [f"model.tokenizer={folder(t, 'tok0', {})}"], "model.tokenizer",
                               "holds no tokenizer files"),
    "tokenizer-only-config": (lambda t, g: [f"model.tokenizer={folder(t, 'tok1', {'tokenizer_config.json': 'copy'}, g / 'model')}"],
                              "model.tokenizer", "holds no tokenizer files"),
    "tokenizer-json-broken": (lambda t, g: [f"model.tokenizer={folder(t, 'tok2', {'tokenizer.json': ''})}"],
                              "model.tokenizer", "tokenizer.json that is not a JSON object"),
    "tokenizer-is-a-model-weights-file": (lambda t, g: [f"model.tokenizer={g / 'model' / M}"], "model.tokenizer",
                                          "is a file"),
    # --- reference ---
    "reference-missing": (lambda t, g: [f"reference.path={t / 'nope'}"], "reference.path", "not a local folder"),
    "reference-only-bin": (lambda t, g: [f"reference.path={folder(t, 'refbin', model_files(g, **{M: None}, pytorch_model__bin=b'PK'), g / 'model')}"],
                           "reference.path", "safetensors only"),
    # --- LoRA adapter ---
    "adapter-empty-folder": (lambda t, g: [f"lora.adapter={folder(t, 'ad0', {})}"], "lora.adapter",
                             "adapter_config.json is missing"),
    "adapter-missing": (lambda t, g: [f"lora.adapter={t / 'nope'}"], "lora.adapter", "does not exist"),
    "adapter-is-a-file": (lambda t, g: [f"lora.adapter={file(t, 'adapter.safetensors')}"], "lora.adapter",
                          "is not a folder"),
    "adapter-no-weights": (lambda t, g: [f"lora.adapter={folder(t, 'ad1', {'adapter_config.json': '{}'})}"],
                           "lora.adapter", "lacks adapter_model.safetensors"),
    "adapter-only-bin": (lambda t, g: [f"lora.adapter={folder(t, 'ad2', {'adapter_config.json': '{}', 'adapter_model.bin': b'PK'})}"],
                         "lora.adapter", "safetensors only"),
    "adapter-bad-weights": (lambda t, g: [f"lora.adapter={folder(t, 'ad3', {'adapter_config.json': '{}', 'adapter_model.safetensors': b''})}"],
                            "lora.adapter", "not a safetensors file"),
    "adapter-is-a-model": (lambda t, g: [f"lora.adapter={g / 'model'}"], "lora.adapter", "use it as model.path"),
    "reward-with-adapter": (lambda t, g: ["loss.name=bradley_terry", "reward.head=scalar",
                                          f"lora.adapter={folder(t, 'ad4', {})}"], "lora.adapter", "reward model"),
    # --- output and cache folders ---
    "output-dir-is-a-file": (lambda t, g: [f"output.dir={file(t, 'run.txt')}"], "output.dir", "not a folder"),
    "output-dir-under-a-file": (lambda t, g: [f"output.dir={file(t, 'parent')}/run"], "output.dir", "not a folder"),
    "cache-dir-is-a-file": (lambda t, g: [f"reference.cache_dir={file(t, 'cache')}", "reference.mode=precomputed"],
                            "reference.cache_dir", "not a folder"),
    # --- data ---
    "train-data-missing": (lambda t, g: [f"data.train={t / 'missing.jsonl'}"], "data.train", "does not exist"),
    "eval-data-missing": (lambda t, g: [f"data.eval={t / 'missing-eval.jsonl'}"], "data.eval", "does not exist"),
    "train-data-plain-folder": (lambda t, g: [f"data.train={folder(t, 'somefolder', {'a.txt': 'x'})}"], "data.train",
                                "not a datasets folder"),
}


def base_yaml(tmp: Path, good: Path) -> Path:
    config = {"model": {"path": str(good / "model")}, "data": {"train": str(good / "pairs.jsonl")},
              "train": {"progress": False, "max_steps": 1},
              "reference": {"cache_dir": str(tmp / "cache-ok")}, "output": {"dir": str(tmp / "run")}}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_is_one_line_before_any_model_loads(name, good, tmp_path, capsys, no_loading, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here; hub ids resolve from an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    make, key, text = CASES[name]
    overrides = make(tmp_path, good)
    job = base_yaml(tmp_path, good)
    with pytest.raises(ConfigError) as err:
        load_config(job, overrides)
    message = str(err.value)
    assert key in message and text in message, message
    assert "\n" not in message
    assert main(["train", "--config", str(job), *overrides]) == 1
    stderr = capsys.readouterr().err.strip()
    assert stderr == f"error: {message}"
    assert "Traceback" not in stderr and "\n" not in stderr
    assert not (tmp_path / "run").exists()  # nothing written either


@pytest.mark.parametrize("name", ["model-only-pytorch-bin", "adapter-empty-folder", "reward-backbone-gguf",
                                  "max-grad-norm-zero"])
def test_rm_train_checks_the_same_way(name, good, tmp_path, capsys, no_loading, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    make, key, _ = CASES[name]
    overrides = [o for o in make(tmp_path, good) if not o.startswith(("loss.", "reward."))]
    assert main(["rm", "train", "--config", str(base_yaml(tmp_path, good)), *overrides]) == 1
    stderr = capsys.readouterr().err.strip()
    assert stderr.startswith("error: ") and key in stderr and "\n" not in stderr and "Traceback" not in stderr


def test_valid_configs_pass(good, tmp_path, no_loading) -> None:
    job = base_yaml(tmp_path, good)
    cfg = load_config(job, ["train.max_grad_norm=null", f"model.tokenizer={good / 'model'}",
                            f"reference.path={good / 'model'}", f"data.eval={good / 'pairs.jsonl'}"])
    assert cfg.train.max_grad_norm is None
    assert load_reward_config(job).reward is not None
    # a sharded checkpoint, a tokenizer built from tokenizer_config.json and vocabulary files, a GGUF file
    model = tiny_llama(len(tiny_tokenizer()))
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    model_load.check_model_path(tmp_path / "sharded")
    vocab = folder(tmp_path, "slow", {"tokenizer_config.json": "{}", "vocab.json": "{}", "merges.txt": ""})
    model_load.check_tokenizer_path(vocab)
    gguf = file(tmp_path, "tiny.gguf", b"GGUF" + bytes(32))
    load_config(job, [f"model.path={gguf}"])
    # an adapter saved by peft (add_lora is patched here)
    from peft import LoraConfig, get_peft_model

    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    assert load_config(job, [f"lora.adapter={tmp_path / 'adapter'}"]).lora.adapter


def test_in_memory_and_toy_configs_name_no_files(tmp_path) -> None:
    from prefkit.toy.demo import TOY_MARKER

    assert TOY == TOY_MARKER
    assert load_config().model.path == ""  # a model passed in Python: nothing to check
    assert load_config(overrides=["model.path=toy", "data.train=toy"]).model.path == "toy"
    cfg = load_config(overrides=["model.path=some/dir"], check_files=False)  # parse only
    assert cfg.model.path == "some/dir"
    with pytest.raises(ConfigError, match="output.dir"):  # the toy world still writes its run folder
        load_config(overrides=["model.path=toy", f"output.dir={file(tmp_path, 'f')}"])


def test_loaders_give_the_same_one_line_errors(good, tmp_path) -> None:
    """Called directly (not through a config), the loaders check first and name the path."""
    bin_only = folder(tmp_path, "bin", model_files(good, **{M: None}, pytorch_model__bin=b"PK"), good / "model")
    for call, text in [(lambda: model_load.load_model(bin_only), "safetensors only"),
                       (lambda: model_load.load_tokenizer(folder(tmp_path, "empty", {})), "no tokenizer files"),
                       (lambda: model_load.add_lora(tiny_llama(8), r=2, alpha=4, adapter=folder(tmp_path, "e2", {})),
                        "adapter_config.json"),
                       (lambda: RewardModel.from_backbone(bin_only), "safetensors only"),
                       (lambda: RewardModel.from_backbone(folder(tmp_path, "m2", model_files(
                           good, tokenizer__json=None, tokenizer_config__json=None), good / "model")),
                        "no tokenizer files"),
                       (lambda: RewardModel.load(folder(tmp_path, "rm", {"reward_config.json": "[]"})),
                        "reward_config.json")]:
        with pytest.raises(ConfigError) as err:
            call()
        assert text in str(err.value) and "\n" not in str(err.value)


def test_models_never_trust_remote_code(good, tmp_path, monkeypatch) -> None:
    """Every ``from_pretrained`` in ``prefkit.models`` passes ``trust_remote_code=False`` and stays local."""
    import transformers

    calls: list[tuple[str, dict]] = []
    for cls_name in ("AutoModel", "AutoModelForCausalLM", "AutoTokenizer"):
        cls = getattr(transformers, cls_name)
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=cls_name, **kwargs):
            calls.append((_name, kwargs))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    model_dir = good / "model"
    model_load.load_model(model_dir)
    model_load.load_tokenizer(model_dir)
    RewardModel.from_backbone(model_dir).save(tmp_path / "rm")
    RewardModel.load(tmp_path / "rm")
    assert {name for name, _ in calls} == {"AutoModel", "AutoModelForCausalLM", "AutoTokenizer"}
    for name, kwargs in calls:
        assert kwargs.get("trust_remote_code") is False, (name, kwargs)
        assert kwargs.get("local_files_only") is True, (name, kwargs)
