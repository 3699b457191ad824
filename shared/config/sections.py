"""The config sections: one frozen pydantic model per component, a docstring per field, and the root `Config`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from shared.config.base import Section as _Section
from shared.config.engine_args import check_engine_kwargs
from shared.config.lora import LoraConfig, check_lora
from shared.config.refusals import check_quantization, check_shard_base, check_sleep_level

Baseline = Literal["group_mean", "rloo"]
"""Advantage baseline: the group mean (GRPO) or the leave-one-out mean (RLOO)."""
LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
"""How token losses become one number: DAPO, GRPO, Dr. GRPO (learner/loss.py `aggregate`)."""
KLEstimator = Literal["k1", "k2", "k3"]
"""Schulman's estimators of KL(policy || reference) per token."""
Objective = Literal["grpo", "dpo"]
"""What a run trains with: GRPO on rollouts, or DPO on a file of preference pairs (no rollouts for training)."""
DpoLoss = Literal["sigmoid", "ipo"]
"""DPO's loss on the pair's log-ratio margin: the logistic (sigmoid) loss, or IPO's squared loss."""
PairFormat = Literal["prompt_completion", "reference_candidate", "candidate_reference"]

Quantization = Literal["none", "int8", "nf4"]
"""How the learner's frozen base is stored: as loaded, torchao int8 weight-only, or bitsandbytes 4-bit NF4."""
"""What a reward-model actor reads: one text, or a (reference, candidate) text pair (learned metrics)."""


class RunConfig(_Section):
    name: str = "arith"
    """Run name; the default run directory is runs/<name>-<timestamp>."""
    steps: int = Field(120, ge=0)
    """Number of GRPO updates."""
    seed: int = 0
    """Seeds data order, sampling and LoRA initialisation."""
    run_dir: str | None = None
    """Where the run writes; None means runs/<name>-<timestamp>."""
    ray_address: str | None = None
    """Ray cluster to join; None starts a local Ray instance."""
    checkpoint_every: int = Field(20, ge=0)
    """Write a checkpoint every N steps (and always on a graceful stop); 0: only on stops and at the end."""
    stop_on_hacking: bool = False
    """Stop the run, with a checkpoint, at the first step where a reward-hacking signature fires (see the `hacking`
    section); false only warns and records `hacking/fired`."""


class ModelConfig(_Section):
    path: str = "builtin:arith"
    """A Hugging Face model directory, or builtin:<task> for the project's tiny warm-started model (built and
    cached on first use)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights dtype for both the engine and the learner."""
    max_model_len: int = Field(64, ge=8)
    """Context length the engine reserves per sequence (prompt + completion)."""
    quantization: Quantization = "none"
    """The learner's frozen base quantized, QLoRA-style: `nf4` is bitsandbytes 4-bit NF4 (TRL/peft's
    `load_in_4bit` with `bnb_4bit_quant_type: nf4`), `int8` torchao int8 weight-only (per output row). LoRA trains
    on top (lora.mode lora, no DoRA); the engines serve int8's own codes (vLLM's torchao method) and nf4's
    dequantized values, so both compute one function (shared/served_base.py, learner/README.md
    "Quantized base")."""
    tokenizer: str | None = None
    """Where the tokenizer lives when not in model.path (a directory or hub name); engine and prompts both use it."""
    chat_template: str | None = None
    """A Jinja chat template file that replaces the tokenizer's own for rendering message prompts."""
    trust_remote_code: bool = False
    """Let transformers and vLLM run code shipped with the model or tokenizer (needed by some hub models)."""


class TaskConfig(_Section):
    name: str = "arith"
    """Built-in task that provides prompts, references and the held-out split (with your own rows, from
    train_file / heldout_file / dataset, it still provides is_correct and the back-translation prompt)."""
    train_size: int = Field(2000, ge=1)
    """Built-in training rows generated (ignored with your own training rows)."""
    heldout_size: int = Field(200, ge=1)
    """With task.dataset and neither task.heldout_split nor task.heldout_file: rows drawn (with run.seed) out of
    the training split and kept for held-out evaluation, never trained on; the first eval.size are evaluated."""
    pass_reward: float = 1.0
    """A completion counts as a pass when its total reward (before length shaping) is at least this; the per-prompt
    pass-rate history (prompt_history.jsonl) and prompt retirement use it."""
    retire_after: int = Field(0, ge=0)
    """Retire a training prompt once every sample of it passed on this many consecutive visits; the sampler then
    skips it. 0 never retires."""
    train_file: str | None = None
    """Your own training rows (JSONL, JSON, CSV or .parquet; format in launch/datafiles.py): every row is used and
    train_size is ignored. The task still supplies is_correct. None: task.dataset, else the task's built-in rows."""
    heldout_file: str | None = None
    """Your own held-out rows (JSONL, JSON, CSV or .parquet), each with a string `answer` that the task's
    is_correct checks; the first eval.size rows are evaluated. None: task.dataset's held-out rows, else the task's
    built-in held-out split."""
    dataset: str | None = None
    """A data set as `datasets.load_dataset` takes it: a hub name, a local directory of data files (splits from file
    names such as train.jsonl / test.jsonl), or a directory written by `save_to_disk`. Rows as in
    launch/datafiles.py; every row of task.train_split is used. Not together with task.train_file."""
    train_split: str = "train"
    """The split of task.dataset to train on."""
    heldout_split: str | None = None
    """The split of task.dataset to evaluate on (first eval.size rows; each needs a string `answer`). None:
    task.heldout_file if set, else task.heldout_size rows drawn out of the training split."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Rename the columns of your own rows (file or data set) before they are checked: old name -> new name, e.g.
    {question: prompt, solution: answer}."""
    prompt_format: Literal["auto", "chat", "plain"] = "auto"
    """What a string prompt is: chat wraps it as one user message and renders it with the chat template; plain sends
    it as-is; auto is plain, with a warning when the model has a chat template. A prompt given as a list of
    messages is always rendered with the template (shared/chat.py)."""
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra variables for the chat template, e.g. {enable_thinking: false} for Qwen3."""
    system_prompt: str | None = None
    """A system message put first in every chat prompt that has none."""
    overlong_prompts: Literal["error", "skip"] = "error"
    """A file row whose prompt tokens + rollout.max_new_tokens exceed model.max_model_len: stop before the run
    starts (error), or leave it out and report the count (skip: printed and written to <run dir>/data.json)."""
    back_translation_prompt: str | None = None
    """What `cycle_consistency` asks the model to translate its completion back with: a template holding `{text}`
    (the completion), e.g. "Translate this English text into Korean. Answer with the translation only.\n\n{text}".
    It reaches the engine like the run's own prompts: through the chat template as one user message when those are
    chat. None: the task's own reverse prompt (task.name=translate: the built-in toy language's "T:...\nS:")."""

    @field_validator("back_translation_prompt")
    @classmethod
    def _holds_text(cls, template: str | None) -> str | None:
        if template is not None and "{text}" not in template:
            raise ValueError("must contain {text}, where the completion to translate back goes")
        return template


class RolloutConfig(_Section):
    num_workers: int = Field(1, ge=1)
    """Rollout worker actors, each owning a vLLM engine."""
    prompts_per_step: int = Field(16, ge=1)
    """Prompts sampled per GRPO step."""
    group_size: int = Field(8, ge=2)
    """Completions per prompt (G)."""
    max_new_tokens: int = Field(8, ge=1)
    min_new_tokens: int = Field(0, ge=0)
    """Suppress EOS until a completion has this many tokens (0: off). For benchmarks that need completions of a
    fixed length (`prolora bench --size large`); a real task leaves it at 0."""
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    """Strings that end a completion besides the model's EOS ids (generation_config.json and the tokenizer's), at
    which generation always stops."""
    kv_cache_gib: int = Field(1, ge=1)
    """KV-cache memory per engine in GiB (on CPU it is host RAM)."""
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    """Fraction of GPU memory the engine may take (GPU machines only)."""
    max_loras: int = Field(2, ge=1)
    """Adapter versions an engine keeps loaded at once."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs per rollout worker actor (0 on CPU machines). Below 1: a share of one GPU (with
    gpu_memory_utilization, the single-GPU case beside the learner); a whole number N > 1: the engine is sharded
    over N GPUs with vLLM tensor parallelism."""
    max_restarts: int = Field(3, ge=0)
    """Restarts of dead rollout workers a run tolerates before it stops with a checkpoint."""
    probe_every: int = Field(1, ge=0)
    """Check every N hot-loads that each engine's greedy logprobs on two prompts of the batch just trained match the
    learner's under the same version (rollout/probe.py; 0: never)."""
    probe_tolerance: float | None = Field(None, gt=0.0)
    """Largest |engine - learner| token logprob the probe accepts; None: 0.05 for float32 weights (engine and learner
    agree closely on CPU) and 0.3 for bfloat16, whose rounding differs between engine and learner even when both
    serve the right adapter."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Any other vLLM engine argument (`vllm.engine.arg_utils.EngineArgs` field), e.g. {kv_cache_dtype: fp8,
    quantization: fp8, enable_chunked_prefill: false}; applied last, so it also overrides the CPU workarounds
    (rollout/worker.py engine_args). Names and value types are checked against the installed vLLM's EngineArgs when
    the config is read; arguments prolora sets from its own keys must be set there."""
    max_staleness: int = Field(0, ge=0)
    """Asynchronous rollouts: generation for step t+1..t+k may run while the learner trains step t, so a batch may
    come from an adapter up to k versions older than the one being trained (k = 0: fully on-policy, synchronous).
    Off-policy samples are corrected by the truncated importance-sampling weight (algo.is_cap). Each engine keeps
    the k+1 newest adapter versions loaded, so rollout.max_loras must be at least k+1."""
    sleep_level: int = 0
    """vLLM sleep mode while the learner trains, for one GPU shared by engine and learner: 1 offloads the engine's
    weights to host memory and frees its KV cache for the update, and wakes it before the next generation (the
    served-adapter probe then runs again); 0 keeps it awake. Needs a GPU engine (rollout.num_gpus > 0),
    synchronous rollouts and rollout.probe_every=1; level 2 is refused (shared/config/refusals.py says why)."""

    @model_validator(mode="after")
    def _sleep_supported(self) -> RolloutConfig:
        check_sleep_level(self.sleep_level, self.num_gpus, self.max_staleness, self.probe_every)
        return self

    @field_validator("engine_kwargs")
    @classmethod
    def _engine_kwargs_known_to_vllm(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs:
            check_engine_kwargs(kwargs)
        return kwargs


class AlgoConfig(_Section):
    objective: Objective = "grpo"
    """grpo: rollouts scored by the rewards; dpo: offline on preference pairs (the training rows from task.train_file
    or task.dataset, each with `prompt`, `chosen` and `rejected`), the reference being the adapter-disabled base.
    Evaluation, checkpoints and metrics are the same for both (learner/README.md, "DPO")."""
    dpo_loss: DpoLoss = "sigmoid"
    """DPO loss: sigmoid, -log sigmoid(beta * margin) on summed log-ratios; ipo, (margin - 1/(2 beta))^2 on
    per-token average log-ratios (TRL's conventions, learner/dpo.py)."""
    dpo_beta: float = Field(0.1, gt=0.0)
    """DPO's beta: how far the policy may move from the reference (larger: closer to it). Separate from kl_coef,
    the weight of GRPO's KL penalty."""
    advantage: Baseline = "group_mean"
    """Baseline: the group mean, or the leave-one-out mean (RLOO)."""
    scale_by_std: bool = True
    """Divide advantages by the group std (GRPO); Dr. GRPO turns this off."""
    batch_norm: bool = False
    """Then renormalise the advantages of the whole training batch to zero mean and unit std."""
    loss_agg: LossAgg = "seq_mean_token_mean"
    """How per-token losses become one number (DAPO token_mean, GRPO seq-mean-token-mean, Dr. GRPO sum/const)."""
    clip_low: float = Field(0.2, ge=0.0)
    """Lower clip range: ratio is clipped at 1 - clip_low."""
    clip_high: float = Field(0.2, ge=0.0)
    """Upper clip range: ratio is clipped at 1 + clip_high (clip-higher uses 0.28)."""
    kl_coef: float = Field(0.0, ge=0.0)
    """Weight of KL(policy || reference) in the loss; 0 turns the term off (KL is still measured, see log_kl)."""
    log_kl: bool = True
    """Measure KL(policy || reference) every step even when kl_coef is 0 (the `kl` metric, the health signal of a long
    run). It costs one no-grad forward pass of the batch under the reference; false skips it when nothing needs it
    (kl_coef 0, no reference.reset_kl_above), as TRL and veRL do at beta 0, and logs kl as null."""
    kl_estimator: KLEstimator = "k3"
    """Schulman's estimator of KL(policy || reference) per token: k1 (log ratio), k2 (squared), k3 (always >= 0)."""
    is_cap: float | None = 2.0
    """Truncated importance sampling cap C on p_learner_old / p_sampler; None turns the correction off."""
    entropy_coef: float = Field(0.0, ge=0.0)
    """Weight of the entropy bonus subtracted from the loss; 0 only logs the entropy."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts to refill the batch."""
    max_refill_rounds: int = Field(3, ge=0)
    """Extra generation rounds dynamic sampling may use per step; a batch still short after them trains as is."""
    overlong_cache_len: int | None = Field(None, ge=1)
    """DAPO soft overlong punishment: add 0 to the reward up to max_new_tokens - this many tokens, then down to -1
    at max_new_tokens. None turns it off."""
    mask_truncated: bool = False
    """Leave completions that hit max_new_tokens out of the loss (DAPO overlong filtering)."""


class ReferenceConfig(_Section):
    """ProRL reference resets: the reference becomes a snapshot of the current adapter.

    The reference starts as the base model (adapter off). A reset fires after a step when any trigger holds; with
    several, the cause is the first of schedule, kl, plateau.
    """

    reset_every: int = Field(0, ge=0)
    """Reset the reference every N steps; 0 turns the schedule off."""
    reset_kl_above: float | None = Field(None, gt=0.0)
    """Reset when a step's mean KL to the reference exceeds this; None turns the trigger off."""
    reset_plateau_evals: int = Field(0, ge=0)
    """Reset when held-out pass@1 has not improved on its best for this many evaluations since the last reset;
    0 turns the trigger off (needs eval.every > 0)."""
    reset_optimizer: bool = False
    """Also re-initialise the optimizer state (AdamW moments) at each reset."""


class TrainConfig(_Section):
    lr: float = Field(2e-3, gt=0.0)
    """AdamW learning rate for the LoRA parameters."""
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    epochs: int = Field(1, ge=1)
    """Optimisation passes over each rollout batch (old logprobs are computed once)."""
    minibatches: int = Field(1, ge=1)
    """Optimiser steps per pass; the batch is split into this many minibatches."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs for the learner actor (0 on CPU machines)."""
    num_threads: int | None = None
    """OpenMP/torch threads of each engine and of the learner; None: every core, or half of them with
    rollout.max_staleness > 0, when engine and learner compute at once (launch/actors.py threads_per_actor)."""
    max_nonfinite_steps: int = Field(3, ge=1)
    """Consecutive steps with a non-finite loss or gradient (updates skipped) before the run stops."""
    micro_batch_tokens: int = Field(8192, ge=1)
    """Tokens (rows x longest row, padding included) per forward/backward pass; a minibatch larger than this is
    split into micro-batches whose gradients accumulate into one optimizer step, the same update as unsplit. Sets
    the learner's activation memory; a row longer than this goes alone (rows are never split)."""
    logits_chunk_tokens: int = Field(128, ge=1)
    """Completion positions projected through the LM head at once: float32 logits exist for this many positions,
    never for a whole micro-batch. The learner's memory beyond its activations is a few (chunk, vocabulary) float32
    temporaries: with a 150k-token vocabulary, 128 positions are 78 MB each."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them (transformers' gradient
    checkpointing): less memory per micro-batch token for about a third more compute."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the learner trains: auto is CUDA when its actor was given a GPU (train.num_gpus > 0), else the CPU;
    cuda fails without a GPU. (The reward model is on CUDA exactly when rewards.reward_model.num_gpus > 0.)"""
    num_learners: int = Field(1, ge=1)
    """Data-parallel learner ranks (one actor each, with train.num_gpus GPUs), joined in a torch.distributed group
    (gloo on the CPU, NCCL on GPUs) and placed together on one node where they fit. Each rank trains on its share of
    every minibatch and the LoRA gradients are summed, so the update is the one a single learner makes on the whole
    batch. A checkpoint resumes with any number of ranks."""
    shard_base: bool = False
    """Shard the frozen base's decoder layers across the learner ranks (torch FSDP2), so each rank holds 1/N of them
    and gathers one layer at a time as it runs; the LoRA weights, embeddings and LM head stay whole on every rank and
    the update is the unsharded group's. Needs train.num_learners >= 2 and plain LoRA (not lora.mode=full or DoRA)."""


class RewardSpec(_Section):
    name: str
    """A built-in reward name or a `module:function` path to user code."""
    weight: float = 1.0
    kwargs: dict[str, Any] | None = None
    """Arguments of a reward factory: the reward is `function(**kwargs)` (e.g. TRL's
    `trl.rewards:get_soft_overlong_punishment` with {max_completion_len: 64, soft_punish_cache: 16}); None: `name`
    is the reward itself."""


class RewardModelConfig(_Section):
    path: str | None = None
    """A transformers sequence-classification model directory (num_labels=1) for the `reward_model` reward; None
    starts no reward-model actor."""
    max_length: int = Field(128, ge=8)
    """Tokens of prompt + completion the reward model sees (longer texts are right-truncated)."""
    batch_size: int = Field(32, ge=1)
    """Texts per forward pass."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs for the reward-model actor (0 on CPU machines)."""
    pair_format: PairFormat = "prompt_completion"
    """What the model reads: `prompt_completion` the text prompt + completion (a reward model; for chat prompts the
    conversation with the completion as the assistant's turn, through the reward model's own chat template);
    `reference_candidate` the tokenizer's text pair (reference, completion), as BLEURT-style metrics are trained;
    `candidate_reference` the pair the other way round. The pair formats read the `reference` column."""


class RougeConfig(_Section):
    """Settings of the `rouge1`, `rouge2` and `rougeL` rewards (learner/rewards/rouge.py)."""

    tokenizer: Literal["auto", "whitespace", "character", "model"] = "auto"
    """auto: whitespace words, with Hangul/CJK/kana/Thai characters one token each (Korean-friendly, plain word
    ROUGE on Latin text); whitespace: words only; character: every non-space character; model: the subword tokens
    of a transformers tokenizer (tokenizer_path)."""
    tokenizer_path: str | None = None
    """Tokenizer directory for tokenizer=model; None: the run's model."""
    measure: Literal["f1", "precision", "recall"] = "f1"
    """Which ROUGE figure is the reward."""


class BertScoreConfig(_Section):
    """Settings of the `bertscore` reward and its actor (learner/rewards/bertscore.py)."""

    model: str | None = None
    """A transformers encoder directory (BERT, RoBERTa, ELECTRA, ...); None starts no BERTScore actor."""
    layer: int | None = Field(None, ge=1)
    """Hidden layer whose embeddings are matched (1 = first transformer layer); None: the last. bert-score's own
    defaults are a middle-upper layer per model (e.g. 17 of 24 for roberta-large), chosen on WMT correlation."""
    idf: bool = False
    """Weight tokens by inverse document frequency over the references of each scored batch (bert-score's
    idf=True on that batch); false: every token weighs the same. [CLS] and [SEP] always weigh 0."""
    max_length: int = Field(256, ge=8)
    """Tokens per text the encoder sees (longer texts are right-truncated)."""
    batch_size: int = Field(64, ge=1)
    """Texts per forward pass."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs for the BERTScore actor (0 on CPU machines); the encoder runs on the GPU when it gets one."""


class RewardsConfig(_Section):
    functions: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="exact_match")])
    """Reward functions and their weights; the total reward is the weighted sum. A running job re-reads them from
    rewards.yaml in its run directory when that file changes (see learner/rewards/README.md)."""
    failure_policy: Literal["zero", "skip_sample", "fail_run"] = "fail_run"
    """What a reward that raises or times out does: score 0, drop the completion, or stop the run."""
    timeout_s: float = Field(30.0, gt=0.0)
    """Per-call timeout of one reward function on one batch."""
    num_actors: int = Field(1, ge=1)
    """Reward actors; batches are split across them."""
    max_restarts: int = Field(3, ge=0)
    """Restarts of dead reward actors a run tolerates (the lost shard is scored again with the reward set in force)
    before it stops with a checkpoint."""
    reward_model: RewardModelConfig = RewardModelConfig()
    """The reward-model actor used by the `reward_model` reward."""
    rouge: RougeConfig = RougeConfig()
    """Tokenizer and measure of the ROUGE rewards."""
    bertscore: BertScoreConfig = BertScoreConfig()
    """The encoder and actor of the `bertscore` reward."""


class HackingConfig(_Section):
    """The reward-hacking watch (shared/hacking.py): signatures of a policy gaming its reward, computed every step
    from the step records (trends compare the mean of the newer half of the last `window` steps with the older
    half). Each threshold can be set to null to turn its signature off."""

    window: int = Field(20, ge=2)
    """Steps in the trend window; nothing fires before the run has this many steps."""
    heldout_margin: float | None = 0.02
    """Held-out: fires when the training reward rose between the last two evaluations by at least
    `heldout_reward_rise` (in units of the mean within-step reward std) while held-out pass@1 changed by less than
    -margin (it fell). A negative margin also fires when it rose by less than |margin| (it lags)."""
    heldout_reward_rise: float = Field(0.5, ge=0.0)
    """The training-reward rise (reward std units) the held-out signature needs to count a reward gain."""
    length_growth: float | None = Field(0.2, gt=0.0)
    """Length: fires when the mean completion length grew by at least this fraction over the window and by
    `length_margin` more than the mean reward did (both relative to their older half)."""
    length_margin: float = Field(0.1, ge=0.0)
    """How much faster (relative growth) length must grow than reward for the length signature."""
    repetition_rise: float | None = Field(0.1, gt=0.0)
    """Repetition: fires when the mean repeated-trigram fraction of completions (`repetition_frac`) rose by at
    least this over the window."""
    learned_rewards: list[str] = Field(default_factory=lambda: ["reward_model"])
    """Reward components that are learned scores; every other component of the set counts as verifiable."""
    divergence_drop: float | None = Field(0.05, gt=0.0)
    """Learned vs verifiable: fires when a learned reward's mean rose over the window while the mean of the
    verifiable components fell by at least this."""
    entropy_ratio: float | None = Field(0.2, gt=0.0, lt=1.0)
    """Entropy: fires when the newer half's mean policy entropy fell below this fraction of the run's first
    `window / 2` steps' mean (entropy collapse)."""


class EvalConfig(_Section):
    every: int = Field(40, ge=0)
    """Evaluate the held-out split every N steps (and at the start and the end); 0 evaluates only start and end."""
    size: int = Field(200, ge=1)
    """Held-out prompts per evaluation."""
    k: int = Field(8, ge=1)
    """k of pass@k."""
    n_samples: int = Field(16, ge=1)
    """Samples per prompt for the unbiased pass@k estimator (n >= k)."""
    temperature: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _n_at_least_k(self) -> EvalConfig:
        if self.n_samples < self.k:
            raise ValueError(f"eval.n_samples ({self.n_samples}) must be >= eval.k ({self.k})")
        return self


class LogConfig(_Section):
    save_adapter_every: int = Field(20, ge=0)
    """Keep a copy of the adapter every N steps under adapters/step_<N>; the latest and final are always kept."""
    rollouts: bool = True
    """Write every completion to rollouts/ (Parquet)."""
    verbose: bool = False
    """Print vLLM, Ray and library logs to the terminal (`prolora train --verbose`); otherwise they go to
    <run dir>/logs/ (launch/progress.py) and the terminal shows prolora's own lines."""
    progress_every: int = Field(10, ge=1)
    """When stderr is not a terminal (jobs, CI), print a progress line every N steps (and after step 1)."""
    tensorboard: bool = False
    """Also write TensorBoard event files to <run dir>/tensorboard (needs the `tensorboard` extra; skipped with a
    note when it is not installed)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the `wandb` extra; skipped with a note when it is not installed)."""
    wandb_project: str = "prolora"
    wandb_mode: Literal["online", "offline"] = "offline"
    """offline writes to <run dir>/wandb for a later `wandb sync`; online needs WANDB_API_KEY (from the
    environment, never the config)."""


class Config(_Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    algo: AlgoConfig = AlgoConfig()
    reference: ReferenceConfig = ReferenceConfig()
    train: TrainConfig = TrainConfig()
    rewards: RewardsConfig = RewardsConfig()
    hacking: HackingConfig = HackingConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()

    @model_validator(mode="after")
    def _supported(self) -> Config:
        check_lora(self.lora, self.rollout.max_staleness, self.rollout.sleep_level)
        check_quantization(self.model.quantization, self.lora, self.train.shard_base)
        if self.train.shard_base:
            check_shard_base(self.train.num_learners, self.lora.mode, self.lora.use_dora)
        return self

    @model_validator(mode="after")
    def _consistent_sections(self) -> Config:
        cache = self.algo.overlong_cache_len
        if cache is not None and cache > self.rollout.max_new_tokens:
            raise ValueError(
                f"algo.overlong_cache_len ({cache}) must be <= rollout.max_new_tokens ({self.rollout.max_new_tokens})"
            )
        r = self.rollout
        if r.max_loras < r.max_staleness + 1:
            raise ValueError(
                f"rollout.max_loras ({r.max_loras}) must be >= rollout.max_staleness + 1 ({r.max_staleness + 1}): "
                f"each engine keeps every adapter version a batch in flight may use; set "
                f"rollout.max_loras={r.max_staleness + 1}"
            )
        if r.num_gpus > 1 and not r.num_gpus.is_integer():
            raise ValueError(
                f"rollout.num_gpus ({r.num_gpus}) above 1 is the engine's tensor-parallel size and must be a whole "
                f"number; below 1 it is a share of one GPU"
            )
        if self.reference.reset_kl_above is not None and not self.algo.log_kl and not self.algo.kl_coef:
            raise ValueError("reference.reset_kl_above needs the KL measured: set algo.log_kl=true or algo.kl_coef > 0")
        if self.reference.reset_plateau_evals and not self.eval.every:
            raise ValueError("reference.reset_plateau_evals needs periodic evaluations: set eval.every > 0")
        return self

    @model_validator(mode="after")
    def _dpo_has_pairs(self) -> Config:
        if self.algo.objective != "dpo":
            return self
        if not (self.task.train_file or self.task.dataset):
            raise ValueError(
                "algo.objective=dpo trains on preference pairs: set task.train_file (or task.dataset) to rows with "
                "prompt, chosen and rejected (python -m launch.tools.make_pairs builds them from base-model samples)"
            )
        if self.reference.reset_every or self.reference.reset_kl_above or self.reference.reset_plateau_evals:
            raise ValueError("reference resets are GRPO's (ProRL); DPO keeps the base model as its reference")
        if self.train.num_learners > 1:
            raise ValueError("algo.objective=dpo trains on one learner: set train.num_learners=1")
        return self

    @model_validator(mode="after")
    def _one_data_source(self) -> Config:
        t = self.task
        if t.dataset and t.train_file:
            raise ValueError("task.dataset and task.train_file both name the training rows: set one of them")
        if not t.dataset and (t.heldout_split or t.train_split != "train"):
            raise ValueError("task.train_split and task.heldout_split choose splits of task.dataset, which is not set")
        if t.heldout_split and t.heldout_file:
            raise ValueError("task.heldout_split and task.heldout_file both name the held-out rows: set one of them")
        if t.heldout_split == t.train_split:
            raise ValueError(
                f"task.heldout_split is the training split ({t.train_split!r}): name another split, or leave it "
                f"unset to hold out task.heldout_size rows of the training split"
            )
        targets = list(t.columns.values())
        if len(set(targets)) < len(targets):
            raise ValueError(f"task.columns renames two columns to the same name: {t.columns}")
        return self
