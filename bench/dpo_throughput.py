"""DPO training throughput: prefkit's log-prob engine (padded / packed / packed + shared prompt) vs TRL.

One synthetic workload, random-init models, the same token sequences, optimizer and data order for
every system, each system in its own subprocess (fresh memory statistics) on the same device:

    # GPU (bf16, Qwen2-0.5B and Llama-3.2-1B shapes, prompts 256, completions 600-768):
    python bench/dpo_throughput.py --device cuda --shapes qwen2-0.5b,llama-3.2-1b --out bench/gpu.json
    # CPU (fp32 tiny Llama, same lengths): ratios only
    python bench/dpo_throughput.py --device cpu --out bench/cpu.json
    # CPU micro-benchmarks of the three techniques (time and peak memory of one forward+backward)
    python bench/dpo_throughput.py --device cpu --micro

TRL is optional and imported lazily: ``pip install trl`` into the same environment (it is not a
prefkit dependency); without it the TRL row is skipped. Reported per system: tokens/s (real, non-pad
tokens of chosen + rejected per step / step time), median step time, peak memory (CUDA: max allocated;
CPU: peak RSS growth over the training steps, sampled every 1 ms), model FLOPs utilisation
(policy forward+backward 6·N·tokens + reference forward 2·N·tokens, N = non-embedding parameters), and
the first 10 losses, which must agree across systems.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

import torch

SYSTEMS = ("prefkit-padded", "prefkit-packed", "prefkit-shared", "trl")

# Dense bf16 peak of the accelerator, for MFU (TFLOP/s); matched by substring of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


@dataclass
class Workload:
    shape: str = "tiny"
    device: str = "cpu"
    batch_size: int = 2  # preference pairs per step (2 * batch_size sequences)
    prompt_len: int = 256
    completion_min: int = 600
    completion_max: int = 768
    steps: int = 10  # measured steps (losses compared over these)
    warmup: int = 1
    lr: float = 1e-5
    beta: float = 0.1
    chunk_size: int = 1024
    seed: int = 0
    attn: str = "sdpa"
    vocab: int | None = None  # override the shape's vocabulary size


def model_config(shape: str):
    """A transformers config of the named shape (random init; nothing is downloaded)."""
    from transformers import LlamaConfig, Qwen2Config

    if shape == "qwen2-0.5b":
        return Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                           num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                           rope_theta=1e6, max_position_embeddings=32768, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2)
    if shape == "llama-3.2-1b":
        return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                           rope_theta=500000.0, max_position_embeddings=131072, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2)
    if shape == "tiny":
        return LlamaConfig(vocab_size=4096, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                           max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    raise SystemExit(f"unknown shape {shape!r}; choose qwen2-0.5b, llama-3.2-1b or tiny")


def build_model(w: Workload):
    from transformers import AutoModelForCausalLM

    config = model_config(w.shape)
    if w.vocab:
        config.vocab_size = w.vocab
    config._attn_implementation = w.attn
    torch.manual_seed(w.seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=w.attn)
    dtype = torch.bfloat16 if w.device == "cuda" else torch.float32
    return model.to(device=w.device, dtype=dtype)


def non_embedding_params(model) -> int:
    embed = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embed)


def examples(w: Workload, vocab: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids; completions end with EOS (id 2); ids >= 3 otherwise."""
    gen = torch.Generator().manual_seed(w.seed + 1)
    out = []
    for _ in range((w.steps + w.warmup) * w.batch_size):
        prompt = torch.randint(3, vocab, (w.prompt_len,), generator=gen).tolist()
        pair = []
        for _ in range(2):
            n = int(torch.randint(w.completion_min, w.completion_max + 1, (1,), generator=gen))
            pair.append(torch.randint(3, vocab, (n - 1,), generator=gen).tolist() + [2])
        out.append((prompt, pair[0], pair[1]))
    return out


def collate(rows: list[tuple[list[int], list[int], list[int]]], device: str):
    from prefkit.data.batch import Batch

    seqs = [(p, c) for p, c, _ in rows] + [(p, r) for p, _, r in rows]  # rows [0:B) chosen, [B:2B) rejected
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    cmask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(seqs):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attn[i, :len(p) + len(c)] = 1
        cmask[i, len(p):len(p) + len(c)] = 1
    return Batch(kind="pair", group_size=2, input_ids=ids, attention_mask=attn, completion_mask=cmask,
                 prompt_lens=torch.tensor([len(p) for p, _ in seqs])).to(device)


class PeakRss:
    """Peak resident memory growth while active, sampled every 1 ms from a thread (CPU runs)."""

    def __init__(self) -> None:
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> PeakRss:
        self.base = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.base


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_prefkit(w: Workload, system: str) -> dict:
    """A minimal DPO loop on prefkit's engine: reference forward (no grad), policy forward+backward,
    ``prefkit.losses`` DPO, grad-norm clip 1.0, AdamW; the same loop TRL's trainer runs."""
    import copy

    from prefkit.losses.pairwise import dpo
    from prefkit.losses.types import PairLogps
    from prefkit.models.logprobs import sequence_logps
    from prefkit.models.packing import packed_sequence_logps

    policy = build_model(w).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=w.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    data = examples(w, policy.config.vocab_size)

    def logps(model, batch):
        if system == "prefkit-padded":
            return sequence_logps(model, batch, chunk_size=w.chunk_size, packing=False)
        return packed_sequence_logps(model, batch, share_prefix=system == "prefkit-shared",
                                     chunk_size=w.chunk_size)

    def pair(seq, b):
        return PairLogps(seq.logps[:b], seq.logps[b:], seq.tokens[:b], seq.tokens[b:])

    losses, times, cpu_times, tokens = [], [], [], []
    mem = PeakRss() if w.device == "cpu" else None
    if mem:
        mem.__enter__()
    for step in range(w.warmup + w.steps):
        if step == w.warmup and w.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        batch = collate(data[step * w.batch_size:(step + 1) * w.batch_size], w.device)
        _sync(w.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.no_grad():
            ref = logps(reference, batch)
        pol = logps(policy, batch)
        loss = dpo(pair(pol, w.batch_size), pair(ref, w.batch_size), beta=w.beta).losses.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        _sync(w.device)
        if step >= w.warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            losses.append(value)
            tokens.append(batch.num_tokens())
    if mem:
        mem.__exit__()
    peak = mem.growth if mem else torch.cuda.max_memory_allocated()
    return _result(w, system, policy, times, tokens, losses, peak, cpu_times)


def run_trl(w: Workload) -> dict:
    """TRL's DPOTrainer on the same token sequences (a word-level tokenizer maps id i <-> "t{i}")."""
    try:
        import trl
        from datasets import Dataset
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast, TrainerCallback
    except ImportError as e:  # pragma: no cover - optional
        return {"system": "trl", "skipped": f"{e}; install with `pip install trl` (benchmark only)"}

    import copy

    policy = build_model(w).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    vocab = policy.config.vocab_size
    words = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")
    data = examples(w, vocab)

    def text(ids):
        return "".join(" </s>" if i == 2 else f" t{i}" for i in ids)

    rows = [{"prompt": text(p).lstrip(), "chosen": text(c), "rejected": text(r)} for p, c, r in data]
    dataset = Dataset.from_list(rows)
    enc = tokenizer(rows[0]["prompt"] + rows[0]["chosen"])["input_ids"]
    assert enc == data[0][0] + data[0][1], "tokenizer does not reproduce the token ids"

    losses: list[float] = []
    times: list[float] = []
    cpu_times: list[float] = []
    tokens: list[int] = []
    mem = PeakRss() if w.device == "cpu" else None

    class Trainer(trl.DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            step = len(tokens)
            ours = collate(data[step * w.batch_size:(step + 1) * w.batch_size], "cpu")
            for row, (theirs, mask) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"], strict=True)):
                expected = ours.input_ids[row][ours.attention_mask[row].bool()].tolist()
                assert theirs[mask.bool()].tolist() == expected, f"TRL step {step} row {row}: other tokens"
            tokens.append(int(inputs["attention_mask"].sum()))
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = out[0] if isinstance(out, tuple) else out
            losses.append(float(loss.detach().float()))
            return out

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0 and mem:
                mem.__enter__()
            if state.global_step == w.warmup and w.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(w.device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            _sync(w.device)
            times.append(time.perf_counter() - self.start)
            cpu_times.append(time.process_time() - self.cpu_start)

    with tempfile.TemporaryDirectory() as out_dir:
        args = trl.DPOConfig(
            output_dir=out_dir, per_device_train_batch_size=w.batch_size, learning_rate=w.lr,
            lr_scheduler_type="constant", warmup_steps=0, max_steps=w.warmup + w.steps, logging_steps=1,
            report_to=[], save_strategy="no", bf16=w.device == "cuda", use_cpu=w.device == "cpu",
            max_length=None, beta=w.beta, loss_type=["sigmoid"], max_grad_norm=1.0, weight_decay=0.0,
            adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", seed=w.seed,
            disable_tqdm=True, dataloader_num_workers=0, train_sampling_strategy="sequential",
        )
        trainer = Trainer(model=policy, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[Timer()])
        trainer.train()
    if mem:
        mem.__exit__()
    peak = mem.growth if mem else torch.cuda.max_memory_allocated()
    result = _result(w, "trl", policy, times[w.warmup:], tokens[w.warmup:], losses[w.warmup:], peak,
                     cpu_times[w.warmup:])
    result["trl_version"] = trl.__version__
    return result


def _result(w: Workload, system: str, model, times, tokens, losses, peak, cpu_times) -> dict:
    n = non_embedding_params(model)
    step = statistics.median(times)
    tok_per_step = statistics.mean(tokens)
    flops = 8 * n * tok_per_step  # 6N policy fwd+bwd + 2N reference fwd, per token
    out = {"system": system, "shape": w.shape, "device": w.device, "non_embedding_params": n,
           "tokens_per_step": tok_per_step, "step_time_s": step, "step_times_s": times,
           "tokens_per_s": tok_per_step / step, "peak_memory_bytes": peak,
           "achieved_tflops": flops / step / 1e12, "losses": losses,
           "step_cpu_time_s": statistics.median(cpu_times), "step_cpu_times_s": cpu_times}
    if w.device == "cuda":
        name = torch.cuda.get_device_name()
        peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        out["gpu"] = name
        out["mfu"] = None if peak_tflops is None else out["achieved_tflops"] / peak_tflops
    return out


# --------------------------------------------------------------------------------------------------
# Micro-benchmarks (one forward + backward of the log-probs; CPU ratios)
# --------------------------------------------------------------------------------------------------


def run_micro(w: Workload, case: str) -> dict:
    from prefkit.models.chunked import target_logps
    from prefkit.models.logprobs import sequence_logps
    from prefkit.models.packing import packed_sequence_logps

    torch.manual_seed(w.seed)
    if case in ("full-logits", "chunked-logits"):
        config = model_config(w.shape)
        config.vocab_size = w.vocab or config.vocab_size
        n_tok = w.batch_size * 2 * (w.completion_min + w.completion_max) // 2
        hidden = torch.randn(n_tok, config.hidden_size, requires_grad=True, device=w.device)
        weight = (torch.randn(config.vocab_size, config.hidden_size, device=w.device) * 0.02).requires_grad_()
        targets = torch.randint(0, config.vocab_size, (n_tok,), device=w.device)

        def step():
            if case == "full-logits":
                lp = torch.log_softmax((hidden @ weight.T).float(), -1).gather(1, targets[:, None])
            else:
                lp = target_logps(hidden, weight, targets, chunk_size=w.chunk_size)
            lp.sum().backward()
        tokens = n_tok
    else:
        model = build_model(w).train()
        batch = collate(examples(w, model.config.vocab_size)[:w.batch_size], w.device)
        tokens = batch.num_tokens()

        def step():
            if case == "padded":
                out = sequence_logps(model, batch, chunk_size=w.chunk_size, packing=False)
            else:
                out = packed_sequence_logps(model, batch, share_prefix=case == "shared", chunk_size=w.chunk_size)
            out.logps.sum().backward()
            model.zero_grad(set_to_none=True)
    step()  # warm-up
    times, cpu_times = [], []
    with PeakRss() as mem:
        for _ in range(w.steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {"case": case, "shape": w.shape, "tokens": tokens, "time_s": statistics.median(times),
            "times_s": times, "cpu_time_s": statistics.median(cpu_times), "cpu_times_s": cpu_times,
            "peak_rss_growth_bytes": mem.growth}


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _worker(payload: str) -> None:
    spec = json.loads(payload)
    w = Workload(**spec["workload"])
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    kind = spec["kind"]
    if kind == "micro":
        result = run_micro(w, spec["case"])
    elif kind == "trl":
        result = run_trl(w)
    else:
        result = run_prefkit(w, kind)
    print("RESULT " + json.dumps(result))


def _spawn(spec: dict) -> dict:
    env = dict(os.environ)
    if spec["workload"]["device"] == "cpu":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"  # big tensors are mmapped, so RSS follows live memory
    proc = subprocess.run([sys.executable, __file__, "--_worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    how = (f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
           if proc.returncode < 0 else f"exit status {proc.returncode}")
    return {"error": f"worker {how}; stderr tail: {proc.stderr[-3000:]}", "spec": spec}


def environment() -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "machine": platform.machine(),
           "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        import trl
        env["trl"] = trl.__version__
    except ImportError:
        env["trl"] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default=None, help="comma list: qwen2-0.5b, llama-3.2-1b, tiny "
                        "(default: both real shapes on cuda, tiny on cpu)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step (default 4 cuda, 2 cpu)")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--completion-len", type=int, nargs=2, default=(600, 768), metavar=("MIN", "MAX"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=None, help="default 3 cuda, 1 cpu")
    parser.add_argument("--attn", default="sdpa", help="attention implementation for every system")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each worker (CPU)")
    parser.add_argument("--vocab", type=int, default=None, help="override the model's vocabulary size")
    parser.add_argument("--micro", action="store_true", help="run the CPU micro-benchmarks instead")
    parser.add_argument("--cases", default="full-logits,chunked-logits,padded,packed,shared",
                        help="micro-benchmark cases")
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        _worker(args._worker)
        return
    cuda = args.device == "cuda"
    shapes = (args.shapes or ("qwen2-0.5b,llama-3.2-1b" if cuda else "tiny")).split(",")
    base = dict(device=args.device, batch_size=args.batch_size or (4 if cuda else 2),
                prompt_len=args.prompt_len, completion_min=args.completion_len[0],
                completion_max=args.completion_len[1], steps=args.steps,
                warmup=args.warmup if args.warmup is not None else (3 if cuda else 1), attn=args.attn,
                vocab=args.vocab)
    report: dict = {"environment": environment(), "command": " ".join([sys.executable, *sys.argv]),
                    "results": []}
    print(json.dumps(report["environment"]))
    for shape in shapes:
        workload = asdict(Workload(shape=shape, **base))
        if args.micro:
            for case in args.cases.split(","):
                res = _spawn({"kind": "micro", "case": case, "workload": workload, "threads": args.threads})
                report["results"].append(res)
                if "error" in res:
                    print(f"{shape} {case}: ERROR\n{res['error']}")
                    continue
                print(f"{shape:>12} {case:>15}: {res['time_s'] * 1e3:8.1f} ms (CPU time "
                      f"{res['cpu_time_s'] * 1e3:8.1f} ms)  "
                      f"peak +{_fmt_bytes(res['peak_rss_growth_bytes'])}  ({res['tokens']} tokens)")
            continue
        for system in args.systems.split(","):
            kind = "trl" if system == "trl" else system
            res = _spawn({"kind": kind, "workload": workload, "threads": args.threads})
            report["results"].append(res)
            if "error" in res or "skipped" in res:
                print(f"{shape} {system}: {res.get('skipped') or 'ERROR'}\n{res.get('error', '')}")
                continue
            mfu = f"  MFU {res['mfu']:.1%}" if res.get("mfu") is not None else ""
            print(f"{shape:>12} {system:>15}: {res['tokens_per_s']:9.0f} tok/s  step {res['step_time_s']:.3f} s "
                  f"(CPU time {res['step_cpu_time_s']:.3f} s)  "
                  f"peak {_fmt_bytes(res['peak_memory_bytes'])}  {res['achieved_tflops']:.3f} TFLOP/s{mfu}")
            print(f"{'':>30} losses: {' '.join(f'{x:.6f}' for x in res['losses'][:10])}")
        ok = [r for r in report["results"] if r.get("shape") == shape and "losses" in r]
        if len(ok) > 1:
            first = ok[0]["losses"][:10]
            worst = max(abs(a - b) for r in ok[1:] for a, b in zip(first, r["losses"][:10], strict=False))
            report.setdefault("max_loss_diff", {})[shape] = worst
            print(f"{'':>30} max |loss difference| over the first 10 steps: {worst:.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
