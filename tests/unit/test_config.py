"""Config parsing: files, --set overrides, and the errors a user sees for unknown keys and bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.config import Config, ConfigError, load_config


def test_defaults_are_the_builtin_run():
    config = load_config()
    assert config == Config()
    assert config.model.path == "builtin:arith"
    assert config.rewards.functions[0].name == "exact_match"


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("run:\n  steps: 7\nalgo:\n  clip_high: 0.28\n")
    config = load_config(path, ["train.lr=1e-3", "lora.target_modules=[q_proj, v_proj]", "run.steps=9"])
    assert config.run.steps == 9  # the override wins over the file
    assert config.algo.clip_high == 0.28
    assert config.train.lr == 1e-3
    assert config.lora.target_modules == ["q_proj", "v_proj"]


def test_toml_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[rollout]\ngroup_size = 4\n[[rewards.functions]]\nname = "exact_match"\nweight = 2.0\n')
    config = load_config(path)
    assert config.rollout.group_size == 4
    assert config.rewards.functions[0].weight == 2.0


def test_unknown_key_names_key_and_allowed_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["rollout.group_sise=4"])
    message = str(err.value)
    assert "rollout.group_sise" in message and "group_size" in message


def test_bad_value_names_key_and_constraint():
    with pytest.raises(ConfigError, match=r"algo.loss_agg: .*token_mean"):
        load_config(overrides=["algo.loss_agg=sum"])
    with pytest.raises(ConfigError, match=r"rollout.group_size: .*greater than or equal to 2"):
        load_config(overrides=["rollout.group_size=1"])


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on assignment to a frozen model
        config.run.steps = 3  # type: ignore[misc]


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_cli_reports_config_errors_without_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", "--set", "eval.k=0"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "eval.k" in proc.stderr and "Traceback" not in proc.stderr


def test_presets_load_with_their_algorithms():
    from launch.cli import presets, resolve_config

    assert presets() == ["dapo", "dr_grpo", "grpo", "korean_qa", "one_gpu", "prorl", "translate", "translate_ko_en"]
    configs = {name: load_config(resolve_config(name)) for name in presets()}
    for name, config in configs.items():
        assert config.run.name == name
        assert resolve_config(name).read_text().startswith("# "), "each preset opens with its source"
    grpo, dr, dapo, prorl = configs["grpo"], configs["dr_grpo"], configs["dapo"], configs["prorl"]
    assert grpo.algo.kl_coef == 0.04 and grpo.algo.scale_by_std and grpo.algo.loss_agg == "seq_mean_token_mean"
    assert not dr.algo.scale_by_std and dr.algo.loss_agg == "seq_mean_token_sum_norm"
    assert dapo.algo.dynamic_sampling and dapo.algo.clip_high == 0.28 and dapo.algo.loss_agg == "token_mean"
    assert dapo.algo.overlong_cache_len is not None and dapo.algo.kl_coef == 0.0
    assert prorl.algo.kl_estimator == "k3" and prorl.algo.kl_coef > 0 and prorl.algo.clip_high > prorl.algo.clip_low
    assert prorl.algo.dynamic_sampling and prorl.algo.loss_agg == "token_mean"
    assert prorl.reference.reset_every > 0 and prorl.reference.reset_optimizer
    assert prorl.rollout.temperature == 1.2
    korean = configs["korean_qa"]
    assert [f.name for f in korean.rewards.functions][2:] == ["rouge1", "bertscore"]
    assert sum(f.weight for f in korean.rewards.functions) == pytest.approx(1.0)
    ko_en = configs["translate_ko_en"]  # the first seed document's run
    assert ko_en.model.path == "LiquidAI/LFM2-1.2B" and ko_en.run.steps >= 1000 and ko_en.reference.reset_every > 0
    assert [f.name for f in ko_en.rewards.functions] == ["chrf", "bleu"]
    one_gpu = configs["one_gpu"]  # engine and learner share one GPU
    assert one_gpu.rollout.num_gpus + one_gpu.train.num_gpus <= 1 and one_gpu.model.dtype == "bfloat16"


def test_config_argument_prefers_an_existing_file(tmp_path, monkeypatch):
    from launch.cli import resolve_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo").write_text("run:\n  name: mine\n")
    assert load_config(resolve_config("grpo")).run.name == "mine"
    assert resolve_config(None) is None


def test_unknown_preset_lists_the_presets():
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "train", "prorll"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "'prorll' is neither a file nor a preset" in proc.stderr
    assert "dapo, dr_grpo, grpo, korean_qa, one_gpu, prorl" in proc.stderr and "Traceback" not in proc.stderr


def test_checks_across_sections():
    with pytest.raises(ConfigError, match=r"algo.overlong_cache_len \(9\) must be <= rollout.max_new_tokens \(8\)"):
        load_config(overrides=["algo.overlong_cache_len=9"])
    with pytest.raises(ConfigError, match="reference.reset_plateau_evals needs periodic evaluations"):
        load_config(overrides=["reference.reset_plateau_evals=2", "eval.every=0"])
    config = load_config(overrides=["algo.overlong_cache_len=8", "reference.reset_kl_above=0.5"])
    assert config.reference.reset_kl_above == 0.5
    with pytest.raises(ConfigError, match="reference.reset_kl_above needs the KL measured"):
        load_config(overrides=["reference.reset_kl_above=0.5", "algo.log_kl=false"])
    assert load_config(overrides=["reference.reset_kl_above=0.5", "algo.log_kl=false", "algo.kl_coef=0.01"])


def test_algorithm_fields_have_docstrings():
    from shared.config import AlgoConfig, ReferenceConfig

    for section in (AlgoConfig, ReferenceConfig):
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no docstring"


def test_max_staleness_needs_room_for_k_plus_1_adapter_versions():
    assert load_config(overrides=["rollout.max_staleness=1"]).rollout.max_loras == 2  # the default fits k = 1
    with pytest.raises(ConfigError, match=r"rollout.max_loras \(2\) must be >= rollout.max_staleness \+ 1 \(3\)"):
        load_config(overrides=["rollout.max_staleness=2"])
    assert load_config(overrides=["rollout.max_staleness=2", "rollout.max_loras=3"]).rollout.max_staleness == 2


def test_weight_push_modes_need_synchronous_rollouts_and_say_why():
    assert load_config().lora.pushes_weights() is False
    assert load_config(overrides=["lora.use_dora=true"]).lora.pushes_weights()
    full = load_config(overrides=["lora.mode=full", "lora.target_modules=[k_proj]", "lora.layers=[0, 2]"]).lora
    assert full.pushes_weights() and full.layers == [0, 2]
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["lora.use_dora=true", "rollout.max_staleness=1", "rollout.max_loras=2"])
    assert "one weight version at a time" in str(err.value) and "rollout.max_staleness=0" in str(err.value)
    with pytest.raises(ConfigError, match="lora.use_dora applies to lora.mode=lora"):
        load_config(overrides=["lora.mode=full", "lora.use_dora=true"])
    with pytest.raises(ConfigError, match="lora.layers must list layer indices"):
        load_config(overrides=["lora.layers=[]"])
    proc = subprocess.run(
        [sys.executable, "-m", "launch.cli", "train", "--set", "lora.mode=full", "--set", "rollout.max_staleness=1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "lora.mode=full" in proc.stderr and "Traceback" not in proc.stderr


def test_sharding_the_base_is_refused_only_where_it_cannot_run_with_the_reason():
    assert load_config().train.shard_base is False
    assert load_config(overrides=["train.shard_base=true", "train.num_learners=2"]).train.shard_base
    cases = {
        "train.num_learners=1": "set train.num_learners to 2 or more",
        "lora.mode=full": "cannot run with lora.mode=full",
        "lora.use_dora=true": "cannot run with lora.use_dora=true",
    }
    for setting, reason in cases.items():
        learners = [] if setting.startswith("train.") else ["train.num_learners=2"]
        with pytest.raises(ConfigError) as err:
            load_config(overrides=["train.shard_base=true", *learners, setting, "rollout.max_staleness=0"])
        assert reason in str(err.value) and "train.shard_base" in str(err.value), setting


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_quantized_base_trains_lora_only(kind):
    assert load_config().model.quantization == "none"
    assert load_config(overrides=[f"model.quantization={kind}"]).model.quantization == kind
    for lora, why in (("lora.mode=full", "cannot train full rank"), ("lora.use_dora=true", "merge into a quantized")):
        with pytest.raises(ConfigError) as err:
            load_config(overrides=[f"model.quantization={kind}", lora, "rollout.max_staleness=0"])
        assert f"model.quantization={kind} with {lora}" in str(err.value) and why in str(err.value)
    with pytest.raises(ConfigError, match=f"model.quantization={kind} with train.shard_base=true"):
        load_config(overrides=[f"model.quantization={kind}", "train.shard_base=true", "train.num_learners=2"])
    for other in ("int4", "int3"):  # 4-bit is NF4 (bitsandbytes); uniform int4 loads on neither side here
        with pytest.raises(ConfigError, match="model.quantization"):
            load_config(overrides=[f"model.quantization={other}"])


def test_weight_push_modes_refuse_engine_sleep():
    with pytest.raises(ConfigError, match="rollout.sleep_level=1 with weights loaded in place"):
        load_config(overrides=["lora.use_dora=true", "rollout.sleep_level=1", "rollout.num_gpus=0.5"])
