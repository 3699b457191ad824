"""The built-in base model: a tiny Llama instruct model in the format hub models ship, warm-started on a built-in task.

Nothing can be downloaded here, so `model.path = "builtin:<task>"` resolves to a model this module builds once and
caches. It is saved as an instruct model from the hub is: a byte-level BPE tokenizer built with the `tokenizers`
library (digits split one per token, as Qwen and Llama 3 do), the ChatML special tokens, a ChatML chat template, and
two EOS ids in generation_config.json (`<|im_end|>`, `<|endoftext|>`), no pad token. `build_tokenizer` is the one
tokenizer builder of the project; the random real-architecture test models (tests/real_models.py) use it too.

The warm start leaves the model where GRPO has signal to learn from: greedy decoding gets a fair share of held-out
problems wrong while sampling often gets them right. It trains on the task's `warmup_rows` (for arithmetic, a sloppy
teacher: see shared/tasks/arithmetic.py) formatted exactly as rollouts see them: the prompt rendered by the run's
PromptRenderer (shared/chat.py; arithmetic's prompts are chat messages, so the chat template's output), then the
answer and `<|im_end|>`, with the loss on the answer and `<|im_end|>` only.

The output directory loads with transformers (AutoModelForCausalLM, AutoTokenizer) and with vLLM. It is built in
a temporary directory beside the cache entry and renamed into place, so a crashed or concurrent build never
leaves a half-written model where a later run would find it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from shared.chat import PromptRenderer
from shared.tasks import Rows, get_task

if TYPE_CHECKING:
    from peft import PeftModel

BUILD_VERSION = 3
"""Bump when the recipe changes in a way the settings below do not capture, so old cache entries go unused."""
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")
"""The EOS ids of generation_config.json, in this order; `<|im_end|>` ends a turn and is the tokenizer's EOS."""
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
"""ChatML as Qwen uses it, with Qwen3's `enable_thinking=False` switch (an empty think block)."""
TOKENIZER_CORPUS = (
    "The quick brown fox jumps over the lazy dog. What is 12 + 35? The answer is 47. "
    "Translate to English: hello world, good morning, thank you very much. "
    "system user assistant You are a helpful assistant. Think step by step, then answer. "
)
"""Text the BPE merges are learnt from; every other byte is still one token of the byte-level alphabet."""
TOKENIZER_VOCAB = 1024
"""The BPE trainer's vocabulary limit; TOKENIZER_CORPUS yields fewer merges than that (a few hundred tokens)."""
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
SFT_PLATEAU_STEPS = {"arith": 450}
"""Per task that has one: the step by which validation greedy accuracy must have left the loss plateau
(SFT_ESCAPE_ACCURACY). A start still on it then is dropped, and the build starts again from the next seed's initial
weights."""
SFT_ESCAPE_ACCURACY = 0.05
SFT_ATTEMPTS = 4
"""Starts the build tries before it gives up on the plateau (from seeds BUILD_SEED, BUILD_SEED + 1, ...)."""
BUILD_SEED = 1
"""Seed of the first start of the cached built-in models (initial weights; the warm-up rows' seed stream starts from
it). How long the warm start stays on its loss plateau depends on the initial weights and on the machine's float
arithmetic, so the build does not rely on one seed: a start still on the plateau at SFT_PLATEAU_STEPS is replaced by
the next seed's (the build prints its loss and accuracy curve, and each restart)."""
BUILD_THREADS = 1
"""torch threads during the build. Float sums depend on the thread count, so pinning it makes the built model
the same on every machine with the same torch and CPU kind; one thread, because a model this small gains little
from two, and two threads slow to a crawl on a machine with other busy processes (their OpenMP threads spin)."""


def build_tokenizer(
    corpus: str = TOKENIZER_CORPUS, vocab_size: int = TOKENIZER_VOCAB, bos_token: str | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer learnt on `corpus`, as instruct models on the hub ship theirs.

    Digits are split one per token (as Qwen and Llama 3 do); the specials are ChatML's (`<|endoftext|>`,
    `<|im_start|>`, `<|im_end|>`), the EOS is `<|im_end|>`, there is no pad token, and the chat template is ChatML.
    With `bos_token` (LFM2's `<|startoftext|>`) that token is added on every plain encode and the template starts
    with it too; without, a plain encode adds nothing.
    """
    specials = [*CHATML_SPECIALS, *([bos_token] if bos_token else [])]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([corpus * 4], trainer=trainer)
    if bos_token:
        bos_id = backend.token_to_id(bos_token)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B", special_tokens=[(bos_token, bos_id)]
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token=bos_token,
        unk_token=None,
        pad_token=None,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = ("{{ bos_token }}" + CHATML_TEMPLATE) if bos_token else CHATML_TEMPLATE
    return tokenizer


def eos_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids of EOS_TOKENS (`<|im_end|>` first), as generation_config.json lists them."""
    ids = tokenizer.convert_tokens_to_ids(list(EOS_TOKENS))
    return [ids] if isinstance(ids, int) else list(ids)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save `tokenizer` (with its chat template) so that every transformers version and vLLM load it."""
    tokenizer.save_pretrained(out_dir)
    # transformers 5 writes tokenizer_class "TokenizersBackend", which older transformers (and tools pinned to
    # them) cannot resolve; PreTrainedTokenizerFast loads everywhere.
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2))


def model_config(size: str = "default", tokenizer: PreTrainedTokenizerBase | None = None) -> LlamaConfig:
    """The Llama config of the built-in model of `size` (a key of SIZES) for `tokenizer` (default: build_tokenizer)."""
    tokenizer = tokenizer or build_tokenizer()
    dims: dict[str, Any] = {"max_position_embeddings": MAX_POSITIONS, **SIZES[size]}
    return LlamaConfig(
        **dims,
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        initializer_range=SFT_INIT_STD,
    )


def _renderer(tokenizer: PreTrainedTokenizerBase) -> PromptRenderer:
    """How a run with the default prompt settings renders the task's prompts: chat messages through the template,
    strings as they are (the translation task's)."""
    return PromptRenderer(tokenizer, warn=lambda _: None)


def _left_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids left-padded with `pad_id` and their attention mask (the tokenizer has no pad token of its own)."""
    width = max(map(len, sequences))
    ids_NT = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask_NT = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, ids in enumerate(sequences):
        ids_NT[i, width - len(ids) :] = torch.tensor(ids)
        mask_NT[i, width - len(ids) :] = 1
    return ids_NT, mask_NT


def _prompt_ids(renderer: PromptRenderer, prompts: list[Any]) -> list[list[int]]:
    """The token ids `renderer.render` gives each prompt. Chat prompts go through the template in one batched call
    (tens of thousands of rows one by one take minutes), checked against `render` on the first."""
    if not all(map(renderer.uses_chat, prompts)):
        return [list(renderer.render(p).token_ids) for p in prompts]
    messages = [renderer.messages(p) for p in prompts]
    kwargs = dict(add_generation_prompt=True, chat_template=renderer.chat_template, **renderer.template_kwargs)
    ids = renderer.tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"]
    if ids[0] != list(renderer.render(prompts[0]).token_ids):
        raise RuntimeError("the batched chat template does not give the renderer's prompt ids")
    return ids


def _sft_batches(tokenizer: PreTrainedTokenizerFast, rows: Rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids of rendered prompt + answer + `<|im_end|>`, right-padded, their attention mask, and labels that are -100
    outside answer + `<|im_end|>`."""
    input_ids, labels = [], []
    for row, prompt_ids in zip(rows, _prompt_ids(_renderer(tokenizer), [r["prompt"] for r in rows]), strict=True):
        answer_ids = tokenizer(row["answer"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        input_ids.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(len(ids) for ids in input_ids)
    ids_NT = torch.full((len(rows), width), tokenizer.eos_token_id, dtype=torch.long)
    mask_NT = torch.zeros((len(rows), width), dtype=torch.long)
    labels_NT = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(input_ids, labels, strict=True)):
        ids_NT[i, : len(ids)] = torch.tensor(ids)
        mask_NT[i, : len(ids)] = 1
        labels_NT[i, : len(lab)] = torch.tensor(lab)
    return ids_NT, mask_NT, labels_NT


def _warm_start(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    task_name: str,
    rows: Rows,
    val_rows: Rows,
    steps: int,
) -> bool:
    """AdamW, warmup then constant learning rate, then a linear decay to zero over SFT_DECAY[task] steps. Returns
    False, having stopped early, when greedy accuracy is still on the plateau at SFT_PLATEAU_STEPS[task] (a task
    without an entry never stops early).

    The decay starts as soon as greedy accuracy on `val_rows` reaches SFT_TARGET_ACCURACY[task] (or when only
    the decay's steps of the budget are left). Addition is learnt in a sudden jump after a loss plateau whose
    length varies widely with the seed and the machine's float arithmetic, so a fixed step count could stop
    before the jump or well after it; triggering on accuracy adapts to when the jump happens.
    """
    ids_NT, mask_NT, labels_NT = _sft_batches(tokenizer, rows)
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
        loss = model(input_ids=ids_NT[batch], attention_mask=mask_NT[batch], labels=labels_NT[batch]).loss
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
            elif step >= SFT_PLATEAU_STEPS.get(task_name, steps) and accuracy < SFT_ESCAPE_ACCURACY:
                print(f"[basemodel] still on the loss plateau after {step} steps: dropping this start", flush=True)
                return False
    print(
        f"[basemodel] sft done after {step} steps, loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    model.eval()
    return True


@torch.no_grad()
def greedy_accuracy(
    model: LlamaForCausalLM | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    task_name: str,
    rows: Rows,
    max_new_tokens: int | None = None,
) -> float:
    """Share of rows whose greedy completion is correct, with the prompts rendered as the rollouts render them
    (chat template for message prompts) and generation stopping at the model's EOS ids.

    `max_new_tokens` defaults to the task's completion budget.
    """
    task = get_task(task_name)
    stop_ids = [i for i in eos_ids(tokenizer) if i is not None] or [tokenizer.eos_token_id]
    ids_NT, mask_NT = _left_padded(_prompt_ids(_renderer(tokenizer), [r["prompt"] for r in rows]), stop_ids[0])
    # transformers types generate's self as a Protocol for the `ty` checker that mypy finds LlamaForCausalLM misses.
    out_NT = model.generate(  # type: ignore[misc]
        input_ids=ids_NT,
        attention_mask=mask_NT,
        max_new_tokens=max_new_tokens or task.max_new_tokens,
        do_sample=False,
        pad_token_id=stop_ids[0],
        eos_token_id=stop_ids,
    )
    texts = tokenizer.batch_decode(out_NT[:, ids_NT.shape[1] :], skip_special_tokens=True)
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
    GenerationConfig(eos_token_id=eos_ids(tokenizer)).save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)
    return out_dir


def _build(
    task_name: str, steps: int, seed: int, size: str = "default"
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """The warm-started model and its tokenizer, from the first of SFT_ATTEMPTS seeds (`seed`, `seed` + 1, ...)
    whose start leaves the loss plateau in time."""
    task = get_task(task_name)
    tokenizer = build_tokenizer()
    for attempt_seed in range(seed, seed + SFT_ATTEMPTS):
        torch.manual_seed(attempt_seed)
        model = LlamaForCausalLM(model_config(size, tokenizer))
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"[basemodel] building the {task_name} base model: {n_params / 1e6:.2f}M params, "
            f"at most {steps} warm-start steps, seed {attempt_seed}",
            flush=True,
        )
        # The warm start draws its rows from a seed stream of its own, not the one RL runs use.
        rows = task.warmup_rows(min(max(steps, 1) * SFT_BATCH, 50_000), 1_000_000 + attempt_seed)
        val_rows = task.train_rows(200, 2_000_000 + attempt_seed)
        if _warm_start(model, tokenizer, task_name, rows, val_rows, steps):
            accuracy = greedy_accuracy(model, tokenizer, task_name, task.heldout_rows(200, seed))
            print(f"[basemodel] held-out greedy accuracy {accuracy:.1%} (200 prompts)", flush=True)
            return model, tokenizer
    limit = SFT_PLATEAU_STEPS.get(task_name, steps)
    raise RuntimeError(
        f"building the built-in {task_name} model: {SFT_ATTEMPTS} starts (seeds {seed} to {seed + SFT_ATTEMPTS - 1}) "
        f"all stayed on the warm start's loss plateau past {limit} steps; this machine's "
        f"float arithmetic differs from the ones the recipe was tuned on. Please report it with the [basemodel] lines "
        f"above; meanwhile model.path can name any local model directory"
    )


def _settings_hash(task_name: str, sft_steps: int, seed: int, size: str = "default") -> str:
    """Short hash of everything the build depends on; a few warm-start rows stand in for the task's data recipe."""
    settings = {
        "version": BUILD_VERSION,
        "task": task_name,
        "sft_steps": sft_steps,
        "seed": seed,
        "sizes": SIZES[size],
        "tokenizer": [TOKENIZER_CORPUS, TOKENIZER_VOCAB, CHATML_SPECIALS, EOS_TOKENS, CHATML_TEMPLATE],
        "batch": SFT_BATCH,
        "lr": SFT_LR,
        "warmup": SFT_WARMUP,
        "init": SFT_INIT_STD,
        "target": SFT_TARGET_ACCURACY[task_name],
        "decay": SFT_DECAY[task_name],
        "eval_every": SFT_EVAL_EVERY,
        "plateau": [SFT_PLATEAU_STEPS.get(task_name), SFT_ESCAPE_ACCURACY, SFT_ATTEMPTS],
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
    final = cache_dir / f"{prefix}-{_settings_hash(task_name, steps, BUILD_SEED, size)}"
    if (final / "config.json").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir))
    try:
        build_base_model(tmp, task_name, steps, seed=BUILD_SEED, size=size)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[basemodel] saved {final} in {time.perf_counter() - start:.0f}s", flush=True)
    return final
