"""The base the engines serve beside a quantized learner base (shared/served_base.py), written where the engines run.

- On a two-node Ray cluster on this machine (ray.cluster_utils, each node with its own $PROLORA_CACHE), the rollout
  workers the launcher starts write the served base on their own node before their engine starts: each engine
  serves a directory under its own node's cache, and both nodes' caches hold one.
- The int8 directory holds the learner's own codes and scales: transformers loads it back quantized, with
  bit-identical codes.
- A rollout worker built as the launcher builds it serves those codes (vLLM's torchao method) and, after a learner
  update on the int8 base, hot-loads the adapter and passes the served-adapter probe at the float32 tolerance.

The cluster runs in a subprocess: a test session's own Ray (conftest's ray_session) cannot be swapped in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner.quantized import dequantized, ensure_served_base, load_base, quantized_modules

ROOT = Path(__file__).resolve().parents[2]
RESULT = "RESULT "
"""Marks the subprocess's answer among what vLLM and Ray print."""


def _two_node_engines(model: str, caches: list[str]) -> dict:
    """Start a head and a second node (one CPU each, their own PROLORA_CACHE), then two rollout workers through the
    launcher (SPREAD: one per node); what each engine serves, and the cluster's node ids."""
    import ray
    from ray.cluster_utils import Cluster

    from launch.actors import start_rollout_workers
    from shared.config import load_config

    cluster = Cluster()
    for i, cache in enumerate(caches):
        cluster.add_node(num_cpus=1, resources={f"node_{i}": 1}, env_vars={"PROLORA_CACHE": cache})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        sets = [f"model.path={model}", "model.quantization=int8", "rollout.num_workers=2", "train.num_threads=1"]
        workers = start_rollout_workers(load_config(overrides=sets), model)
        infos = ray.get([w.engine_info.remote() for w in workers], timeout=600)
        nodes = {n["NodeID"]: next(k for k in n["Resources"] if k.startswith("node_")) for n in ray.nodes()}
        return {"engines": infos, "nodes": nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_each_engine_serves_a_base_written_on_its_own_node(tiny_model, tmp_path):
    caches = [str(tmp_path / "cache-a"), str(tmp_path / "cache-b")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROLORA_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.test_served_base", str(tiny_model), *caches],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith(RESULT))[len(RESULT) :])
    assert len(result["nodes"]) == 2
    served = [Path(e["model"]) for e in result["engines"]]
    # Each engine's directory lies in its own node's cache: the write ran on that node, once per node.
    assert sorted(str(p.parents[1]) for p in served) == sorted(caches)
    for path in served:
        assert path.parent.name == "served" and (path / "model.safetensors").is_file()
        assert "torchao" in (path / "config.json").read_text()  # int8: the learner's codes
    assert all(e["device"] == "cpu" and e["quantization"] == "torchao" for e in result["engines"])


def test_the_int8_directory_holds_the_learners_own_codes(tiny_model, tmp_path):
    served = ensure_served_base(str(tiny_model), "int8", "float32", tmp_path, holds="quantized")
    assert ensure_served_base(str(tiny_model), "int8", "float32", tmp_path, holds="quantized") == served
    config = json.loads((Path(served) / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    learner = quantized_modules(load_base(str(tiny_model), "int8", torch.float32))
    reloaded = quantized_modules(load_base(served, "int8", torch.float32))
    assert learner.keys() == reloaded.keys() and learner
    for name, module in learner.items():
        assert torch.equal(module.weight.qdata, reloaded[name].weight.qdata), name
        assert torch.equal(module.weight.scale, reloaded[name].weight.scale), name
        assert torch.equal(dequantized(module.weight), dequantized(reloaded[name].weight)), name


def test_an_engine_serves_the_int8_codes_and_computes_what_the_learner_does(tiny_model, tmp_path, monkeypatch):
    from launch.actors import served_base_writer
    from rollout.probe import check_probe, probe_prompts
    from rollout.worker import RolloutWorker
    from shared.config import load_config
    from shared.records import SamplingSpec
    from tests.integration.test_learner_algos import _batch
    from tests.integration.test_quantized_base import _learner

    monkeypatch.setenv("PROLORA_CACHE", str(tmp_path))
    config = load_config(overrides=[f"model.path={tiny_model}", "model.quantization=int8"])
    prepare = served_base_writer(config, str(tiny_model))
    worker = RolloutWorker(
        str(tiny_model), max_model_len=64, kv_cache_gib=1, quantization="int8", prepare_model=prepare
    )
    try:
        info = worker.engine_info()
        assert info["quantization"] == "torchao" and Path(info["model"]).parent == tmp_path / "served"
        learner = _learner(tiny_model, "int8")
        learner.train_step(_batch(tiny_model))
        groups = worker.generate(["123+456=", "907+15=", "38+444="], SamplingSpec(n=1, max_tokens=6, temperature=0.0))
        payload = learner.export_adapter(*probe_prompts(groups, 64))
        report = worker.load_adapter(payload)
        assert payload.probe is not None
        assert check_probe(payload.probe, [report], 2e-3) <= 2e-3
    finally:
        worker.shutdown()


@pytest.mark.parametrize("arch", ["qwen2", "lfm2"])
def test_an_int8_engine_of_a_real_architecture_serves_what_the_learner_trains(real_models, tmp_path, monkeypatch, arch):
    """The same on hub-format models (byte-level BPE, ChatML template, two EOS ids): Qwen2, and LFM2's hybrid
    convolution layers, whose torchao codes vLLM must load into its own LFM2 implementation."""
    from launch.actors import served_base_writer
    from rollout.probe import check_probe, probe_prompts
    from rollout.worker import RolloutWorker
    from shared.config import load_config
    from shared.records import SamplingSpec
    from tests.integration.test_learner_algos import _batch
    from tests.integration.test_quantized_base import _learner

    model = real_models[arch]
    monkeypatch.setenv("PROLORA_CACHE", str(tmp_path))
    config = load_config(overrides=[f"model.path={model}", "model.quantization=int8"])
    prepare = served_base_writer(config, str(model))
    worker = RolloutWorker(str(model), max_model_len=128, kv_cache_gib=1, quantization="int8", prepare_model=prepare)
    try:
        assert worker.engine_info()["quantization"] == "torchao"
        learner = _learner(model, "int8")
        learner.train_step(_batch(model))
        prompt = "<|im_start|>user\n123+456=<|im_end|>\n<|im_start|>assistant\n"
        groups = worker.generate([prompt], SamplingSpec(n=1, max_tokens=6, temperature=0.0))
        payload = learner.export_adapter(*probe_prompts(groups, 64))
        report = worker.load_adapter(payload)
        assert payload.probe is not None
        assert check_probe(payload.probe, [report], 2e-3) <= 2e-3
    finally:
        worker.shutdown()


if __name__ == "__main__":
    print(RESULT + json.dumps(_two_node_engines(sys.argv[1], sys.argv[2:])))
