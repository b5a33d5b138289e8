"""Model loading: local directories, GGUF files (``gguf_file=``), LoRA, and the no-hub-id rule."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from prefkit.errors import ConfigError
from prefkit.models.load import adapters_disabled, add_lora, load_model, load_tokenizer
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer

gguf = pytest.importorskip("gguf")


def write_gguf(model, tokenizer, path) -> None:
    """A float32 llama GGUF of ``model`` as llama.cpp's converter lays it out (q/k rows permuted for
    its rotary layout, which transformers' loader undoes), with a GPT-2 style BPE tokenizer."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(c.vocab_size)
    tj = json.loads(tokenizer.backend_tokenizer.to_str())
    added = {t["content"]: t["id"] for t in tj["added_tokens"]}
    ids = {**tj["model"]["vocab"], **added}
    tokens = sorted(ids, key=ids.get)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tj["model"]["merges"]])
    w.add_token_types([3 if t in added else 1 for t in tokens])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)

    def permute(x, n_head):
        return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_directory_and_gguf_load_the_same_model(tmp_path) -> None:
    tok = copy.deepcopy(tiny_tokenizer())
    model = tiny_llama(len(tok))
    model.save_pretrained(tmp_path / "hf")
    write_gguf(model, tok, tmp_path / "tiny.gguf")
    ids = torch.tensor([[1, 50, 60, 70, 80, 2]])
    with torch.no_grad():
        want = model(ids).logits
        for path in (tmp_path / "hf", tmp_path / "tiny.gguf"):
            torch.testing.assert_close(load_model(path)(ids).logits, want, atol=1e-5, rtol=1e-5)
    text = "Question: the cat sat.\nAnswer: Sure, happy to help."
    gguf_ids = load_tokenizer(tmp_path / "tiny.gguf")(text, add_special_tokens=False)["input_ids"]
    assert gguf_ids == tok(text, add_special_tokens=False)["input_ids"]


def test_train_from_gguf(tmp_path) -> None:
    from prefkit.data.writers import write_jsonl
    from prefkit.train import load_config, run

    tok = copy.deepcopy(tiny_tokenizer())
    write_gguf(tiny_llama(len(tok)), tok, tmp_path / "tiny.gguf")
    write_jsonl(tiny_pairs(4), tmp_path / "pairs.jsonl")
    out = run(load_config(overrides=[f"model.path={tmp_path / 'tiny.gguf'}", f"data.train={tmp_path / 'pairs.jsonl'}",
                                     "lora.r=2", "train.max_steps=2", "train.batch_size=4", "train.progress=false",
                                     "output.tensorboard=false", "output.plots=false", f"output.dir={tmp_path / 'run'}"]))
    assert out["step"] == 2 and (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("path", ["HuggingFaceTB/SmolLM2-135M", "/nonexistent/dir", ""])
def test_only_local_paths(path) -> None:
    with pytest.raises(ConfigError, match="local|no model path"):
        load_model(path)


def test_lora_starts_at_base_and_adapters_off_is_base() -> None:
    tok = tiny_tokenizer()
    base = tiny_llama(len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = add_lora(tiny_llama(len(tok)), r=2, alpha=4)
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        torch.testing.assert_close(policy(ids).logits, base(ids).logits)  # B = 0 at init
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)
        assert not torch.allclose(policy(ids).logits, base(ids).logits)
        with adapters_disabled(policy):
            torch.testing.assert_close(policy(ids).logits, base(ids).logits)
    assert all("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
