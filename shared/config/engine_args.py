"""Which vLLM engine arguments a user may pass (`rollout.engine_kwargs`), checked against vLLM's own EngineArgs.

The check imports vLLM, so only a config that sets engine_kwargs pays for it; the engine arguments prolora sets
itself belong to config keys, named here.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

OWNED_ENGINE_ARGS = {
    "model": "model.path",
    "dtype": "model.dtype",
    "max_model_len": "model.max_model_len",
    "max_lora_rank": "lora.rank",
    "max_loras": "rollout.max_loras",
    "gpu_memory_utilization": "rollout.gpu_memory_utilization",
    "tensor_parallel_size": "rollout.num_gpus",
    "seed": "run.seed",
    "enable_lora": "nothing: adapters are how prolora serves the policy",
    "logprobs_mode": "nothing: the importance ratio needs the sampled distribution's (processed) logprobs",
}
"""Engine arguments prolora sets itself, and the config key that sets each."""


def check_engine_kwargs(kwargs: dict[str, Any]) -> None:
    """Raise ValueError naming every key of rollout.engine_kwargs that vLLM's EngineArgs lacks or whose value has
    the wrong type (pydantic against EngineArgs' own annotations; a field whose annotation it cannot read is
    checked by name only). Imports vLLM, so it runs only when engine_kwargs is set."""
    import dataclasses

    from pydantic import TypeAdapter

    try:
        import vllm.engine.arg_utils as arg_utils
    except ImportError as err:
        raise ValueError(
            f"rollout.engine_kwargs is checked against vLLM's EngineArgs, but vLLM does not import: {err}"
        ) from None
    fields = {f.name: f for f in dataclasses.fields(arg_utils.EngineArgs)}
    problems = []
    for key, value in kwargs.items():
        if key in OWNED_ENGINE_ARGS:
            problems.append(f"{key!r} is set by prolora: set {OWNED_ENGINE_ARGS[key]}")
        elif key not in fields:
            problems.append(f"{key!r} is not a vLLM engine argument (vllm.engine.arg_utils.EngineArgs)")
        else:
            problem = _engine_value_problem(fields[key].type, value, vars(arg_utils), TypeAdapter)
            if problem:
                problems.append(f"{key}={value!r}: {problem}")
    if problems:
        raise ValueError("; ".join(problems))


def _engine_value_problem(annotation: Any, value: Any, namespace: dict[str, Any], adapter: Any) -> str | None:
    try:
        kind = eval(annotation, dict(namespace)) if isinstance(annotation, str) else annotation
        check = adapter(kind)
    except Exception:  # an annotation pydantic cannot build a validator for: the name check stands
        return None
    try:
        check.validate_python(value)
    except ValidationError as err:
        return "; ".join(e["msg"] for e in err.errors())
    return None
