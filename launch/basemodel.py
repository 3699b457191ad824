"""The built-in base model: a tiny Llama with a character-level tokenizer, warm-started on a built-in task.

Nothing can be downloaded here, so `model.path = "builtin:<task>"` resolves to a model this module builds
once and caches. The warm start leaves the model where GRPO has signal to learn from: greedy decoding gets a
fair share of held-out problems wrong while sampling often gets them right. It trains on the task's
`warmup_rows` (for arithmetic, a sloppy teacher: see shared/tasks/arithmetic.py), formatted exactly as rollouts
see them: BOS + prompt, then answer + EOS, with the loss on the answer and EOS only.

The output directory loads with transformers (AutoModelForCausalLM, AutoTokenizer) and with vLLM. It is built in
a temporary directory beside the cache entry and renamed into place, so a crashed or concurrent build never
leaves a half-written model where a later run would find it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import string
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from shared.tasks import Rows, get_task

if TYPE_CHECKING:
    from peft import PeftModel

BUILD_VERSION = 2
"""Bump when the recipe changes in a way the settings below do not capture, so old cache entries go unused."""
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))
CHARSET = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")
"""Letters, digits, punctuation, space and newline: one token each."""
MAX_POSITIONS = 128

# The model and the warm start. head_dim 32 is one of the head sizes vLLM's CPU attention supports.
MODEL_SIZES = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 32,
}
LARGE_MODEL_SIZES = {
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 6,
    "num_attention_heads": 8,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 256,
}
"""About 25M parameters, for `prolora bench --size large`: big enough that generating 128-token completions, not
Python overhead, dominates a step. Positions for a short prompt plus 128 generated tokens."""
SIZES = {"default": MODEL_SIZES, "large": LARGE_MODEL_SIZES}
SIZE_SFT_STEPS = {"large": 0}
"""Warm-start budget per size where it differs from SFT_STEPS: the large model stays randomly initialised (a warm
start of 25M parameters takes far longer on a CPU than a benchmark should wait, and throughput needs no skill)."""
SFT_STEPS = {"arith": 800, "translate": 150}
"""Warm-start step budget per task; it usually ends earlier, see SFT_TARGET_ACCURACY."""
SFT_BATCH = 64
SFT_LR = 3e-3
SFT_WARMUP = 20
SFT_INIT_STD = 0.06
"""Weight init std, above transformers' 0.02 so attention starts less uniform. The loss sits on a plateau until
attention finds the digits it needs; with the larger std the step of the jump varies less between seeds."""
SFT_TARGET_ACCURACY = {"arith": 0.2, "translate": 0.2}
"""Per task: validation greedy accuracy at which the learning rate starts its decay (accuracy still rises
during it)."""
SFT_DECAY = {"arith": 150, "translate": 50}
"""Per task: steps of the final linear learning-rate decay (arith needs them to learn its teacher's habits)."""
SFT_EVAL_EVERY = 25
BUILD_THREADS = 1
"""torch threads during the build. Float sums depend on the thread count, so pinning it makes the built model
the same on every machine with the same torch and CPU kind; one thread, because a model this small gains little
from two, and two threads slow to a crawl on a machine with other busy processes (their OpenMP threads spin)."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: one token per character of CHARSET; BOS is prepended on every encode."""
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *CHARSET))}
    # BPE with no merges is exactly character-level; unknown characters become <unk>.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def model_config(size: str = "default") -> LlamaConfig:
    """The Llama config of the built-in model of `size` (a key of SIZES)."""
    dims: dict[str, Any] = {"max_position_embeddings": MAX_POSITIONS, **SIZES[size]}
    return LlamaConfig(
        **dims,
        vocab_size=len(SPECIAL_TOKENS) + len(CHARSET),
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        initializer_range=SFT_INIT_STD,
    )


def _save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    tokenizer.save_pretrained(out_dir)
    # transformers 5 writes tokenizer_class "TokenizersBackend", which older transformers (and tools pinned to
    # them) cannot resolve; PreTrainedTokenizerFast loads everywhere.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["add_bos_token"] = True
    config_path.write_text(json.dumps(config, indent=2))
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _sft_batches(tokenizer: PreTrainedTokenizerFast, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of BOS + prompt + answer + EOS, right-padded, and labels that are -100 outside answer + EOS."""
    input_ids, labels = [], []
    for row in rows:
        prompt_ids = tokenizer(row["prompt"]).input_ids  # starts with BOS
        answer_ids = tokenizer(row["answer"], add_special_tokens=False).input_ids + [EOS_ID]
        input_ids.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(len(ids) for ids in input_ids)
    ids_NT = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    labels_NT = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(input_ids, labels, strict=True)):
        ids_NT[i, : len(ids)] = torch.tensor(ids)
        labels_NT[i, : len(lab)] = torch.tensor(lab)
    return ids_NT, labels_NT


def _warm_start(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    task_name: str,
    rows: Rows,
    val_rows: Rows,
    steps: int,
) -> None:
    """AdamW, warmup then constant learning rate, then a linear decay to zero over SFT_DECAY[task] steps.

    The decay starts as soon as greedy accuracy on `val_rows` reaches SFT_TARGET_ACCURACY[task] (or when only
    the decay's steps of the budget are left). Addition is learnt in a sudden jump after a loss plateau whose
    length varies widely with the seed and the machine's float arithmetic, so a fixed step count could stop
    before the jump or well after it; triggering on accuracy adapts to when the jump happens.
    """
    ids_NT, labels_NT = _sft_batches(tokenizer, rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LR, weight_decay=0.0, betas=(0.9, 0.98))
    decay_steps, target = SFT_DECAY[task_name], SFT_TARGET_ACCURACY[task_name]
    decay_start = max(0, steps - decay_steps)
    start, step, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    while step < min(steps, decay_start + decay_steps):
        warmup = min(1.0, (step + 1) / SFT_WARMUP)
        decay = min(1.0, (decay_start + decay_steps - step) / decay_steps)
        for group in optimizer.param_groups:
            group["lr"] = SFT_LR * warmup * decay
        batch = torch.arange(step * SFT_BATCH, (step + 1) * SFT_BATCH) % len(rows)  # rows are already shuffled
        model.train()
        ids_BT, labels_BT = ids_NT[batch], labels_NT[batch]
        loss = model(input_ids=ids_BT, attention_mask=(ids_BT != PAD_ID).long(), labels=labels_BT).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % SFT_EVAL_EVERY == 0 and step <= decay_start:
            accuracy = greedy_accuracy(model, tokenizer, task_name, val_rows)
            print(
                f"[basemodel] sft step {step} loss {loss.item():.3f} val greedy accuracy {accuracy:.1%} "
                f"({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
            if accuracy >= target:
                decay_start = step
    print(
        f"[basemodel] sft done after {step} steps, loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    model.eval()


@torch.no_grad()
def greedy_accuracy(
    model: LlamaForCausalLM | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    task_name: str,
    rows: Rows,
    max_new_tokens: int | None = None,
) -> float:
    """Share of rows whose greedy completion is correct, with the same formatting the rollouts use.

    `max_new_tokens` defaults to the task's completion budget.
    """
    task = get_task(task_name)
    enc = tokenizer([r["prompt"] for r in rows], padding=True, padding_side="left", return_tensors="pt")
    # transformers types generate's self as a Protocol for the `ty` checker that mypy finds LlamaForCausalLM misses.
    out_NT = model.generate(  # type: ignore[misc]
        **enc,
        max_new_tokens=max_new_tokens or task.max_new_tokens,
        do_sample=False,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
    )
    texts = tokenizer.batch_decode(out_NT[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return sum(task.is_correct(t, r["answer"]) for t, r in zip(texts, rows, strict=True)) / len(rows)


def build_base_model(
    out_dir: str | Path, task_name: str = "arith", sft_steps: int | None = None, seed: int = 0, size: str = "default"
) -> Path:
    """Build the model of `size`, warm-start it on `task_name` for `sft_steps` steps and save it to `out_dir`."""
    out_dir = Path(out_dir)
    steps = SFT_STEPS[task_name] if sft_steps is None else sft_steps
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        model, tokenizer = _build(task_name, steps, seed, size)
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID).save_pretrained(out_dir)
    _save_tokenizer(tokenizer, out_dir)
    return out_dir


def _build(
    task_name: str, steps: int, seed: int, size: str = "default"
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    task = get_task(task_name)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(model_config(size))
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"[basemodel] building the {task_name} base model: {n_params / 1e6:.2f}M params, "
        f"at most {steps} warm-start steps",
        flush=True,
    )
    # The warm start draws its rows from a seed stream of its own, not the one RL runs use.
    rows = task.warmup_rows(min(max(steps, 1) * SFT_BATCH, 50_000), 1_000_000 + seed)
    val_rows = task.train_rows(200, 2_000_000 + seed)
    _warm_start(model, tokenizer, task_name, rows, val_rows, steps)
    accuracy = greedy_accuracy(model, tokenizer, task_name, task.heldout_rows(200, seed))
    print(f"[basemodel] held-out greedy accuracy {accuracy:.1%} (200 prompts)", flush=True)
    return model, tokenizer


def _settings_hash(task_name: str, sft_steps: int, seed: int, size: str = "default") -> str:
    """Short hash of everything the build depends on; a few warm-start rows stand in for the task's data recipe."""
    settings = {
        "version": BUILD_VERSION,
        "task": task_name,
        "sft_steps": sft_steps,
        "seed": seed,
        "sizes": SIZES[size],
        "charset": CHARSET,
        "batch": SFT_BATCH,
        "lr": SFT_LR,
        "warmup": SFT_WARMUP,
        "init": SFT_INIT_STD,
        "target": SFT_TARGET_ACCURACY[task_name],
        "decay": SFT_DECAY[task_name],
        "eval_every": SFT_EVAL_EVERY,
        "threads": BUILD_THREADS,
        "data": get_task(task_name).warmup_rows(20, 1_000_000 + seed),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def default_cache_dir() -> Path:
    """$PROLORA_CACHE/base, or ~/.cache/prolora/base."""
    return Path(os.environ.get("PROLORA_CACHE", "~/.cache/prolora")).expanduser() / "base"


def ensure_base_model(
    task_name: str = "arith", cache_dir: Path | None = None, *, sft_steps: int | None = None, size: str = "default"
) -> Path:
    """The cached base model directory for `task_name` and `size` (a key of SIZES), built on first use.

    `cache_dir` holds one directory per build setting (default: `default_cache_dir()`).
    """
    steps = SIZE_SFT_STEPS.get(size, SFT_STEPS[task_name]) if sft_steps is None else sft_steps
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    prefix = task_name if size == "default" else f"{task_name}-{size}"
    final = cache_dir / f"{prefix}-{_settings_hash(task_name, steps, 0, size)}"
    if (final / "config.json").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir))
    try:
        build_base_model(tmp, task_name, steps, seed=0, size=size)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[basemodel] saved {final} in {time.perf_counter() - start:.0f}s", flush=True)
    return final
