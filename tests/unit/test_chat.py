"""Chat prompts and TRL-format rewards without an engine: rendering, the reward arguments, the pre-run reward check,
`prolora score` on conversational rows, stop ids. The tokenizers are the real-architecture test models' (conftest)."""

from __future__ import annotations

import io
import json

import pytest
from transformers import AutoTokenizer

from launch.progress import Progress
from launch.tools.score import score_file
from learner.rewards.pool import RewardFormatError, check_rewards_on_row
from learner.rewards.worker import RewardWorker
from shared.chat import PromptFormatError, PromptRenderer, eos_token_ids, message_text
from shared.config import Config, RewardSpec, load_config
from shared.records import RewardBatch

MESSAGES = [{"role": "user", "content": "What is 12 + 35?"}]


def _renderer(path, **kwargs) -> tuple[PromptRenderer, list[str]]:
    warnings: list[str] = []
    return PromptRenderer(AutoTokenizer.from_pretrained(path), warn=warnings.append, **kwargs), warnings


def test_lfm2_prompt_ids_are_the_templates_with_one_bos(real_models):
    renderer, _ = _renderer(real_models["lfm2"])
    tokenizer = renderer.tokenizer
    prompt = renderer.render(MESSAGES)
    expected = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert list(prompt.token_ids) == expected
    assert prompt.token_ids[0] == tokenizer.bos_token_id and prompt.token_ids.count(tokenizer.bos_token_id) == 1
    # What re-tokenizing the rendered text would have sent: the tokenizer's BOS before the template's.
    assert tokenizer(prompt.text)["input_ids"][:2] == [tokenizer.bos_token_id] * 2


def test_system_prompt_is_added_only_where_the_row_has_none(real_models):
    renderer, _ = _renderer(real_models["qwen2"], system_prompt="Be brief.")
    assert renderer.render(MESSAGES).text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    own = [{"role": "system", "content": "Mine."}, *MESSAGES]
    assert renderer.render(own).text.count("<|im_start|>system") == 1 and "Mine." in renderer.render(own).text


def test_string_prompts_under_each_format(real_models, tiny_model):
    auto, warnings = _renderer(real_models["qwen3"])
    assert auto.render("12+35=").text == "12+35=" and auto.render("1+1=").messages is None
    assert len(warnings) == 1 and "task.prompt_format=chat" in warnings[0]  # once, saying how to choose
    chat, _ = _renderer(real_models["qwen3"], prompt_format="chat", template_kwargs={"enable_thinking": False})
    wrapped = chat.render("12+35=")
    assert wrapped.messages == ({"role": "user", "content": "12+35="},)
    assert wrapped.text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    plain, _ = _renderer(real_models["qwen3"], prompt_format="plain")
    with pytest.raises(PromptFormatError, match="prompt_format=plain"):
        plain.render(MESSAGES)
    builtin, builtin_warnings = _renderer(tiny_model)  # the built-in model is a ChatML instruct model too
    assert builtin.render(MESSAGES).text == "<|im_start|>user\nWhat is 12 + 35?<|im_end|>\n<|im_start|>assistant\n"
    assert builtin.render("1+2=").token_ids == tuple(builtin.tokenizer("1+2=").input_ids)  # plain: no BOS added
    assert len(builtin_warnings) == 1
    no_template, _ = _renderer(tiny_model)
    no_template.chat_template = None  # as for a base model that ships none
    with pytest.raises(PromptFormatError, match="no chat template"):
        no_template.render(MESSAGES)


def test_eos_ids_come_from_the_generation_config_and_the_tokenizer(real_models):
    tokenizer = AutoTokenizer.from_pretrained(real_models["llama"])
    ids = eos_token_ids(str(real_models["llama"]), tokenizer)
    assert ids == tuple(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))


def test_sampling_params_stop_at_every_id_and_string():
    from rollout.worker import sampling_params
    from shared.records import SamplingSpec

    (params,) = sampling_params(SamplingSpec(n=2, max_tokens=8, stop=("\n\n",)), 1, (7, 9))
    assert set(params.stop_token_ids) == {7, 9} and params.stop == ["\n\n"]
    assert params.logprobs == 0 and params.flat_logprobs  # only the sampled token's, one flat list per completion


def test_sampled_logprobs_read_vllms_flat_and_per_position_forms_alike():
    from types import SimpleNamespace

    from vllm.logprobs import FlatLogprobs, Logprob

    from rollout.worker import _sampled_logprobs

    flat = FlatLogprobs()
    for token, logprob in ((5, -0.5), (9, -1.25)):
        flat.append({token: Logprob(logprob)})
    assert _sampled_logprobs(SimpleNamespace(token_ids=[5, 9], logprobs=flat)) == (-0.5, -1.25)
    per_position = [{5: Logprob(-0.5)}, {9: Logprob(-1.25)}]
    assert _sampled_logprobs(SimpleNamespace(token_ids=[5, 9], logprobs=per_position)) == (-0.5, -1.25)
    with pytest.raises(RuntimeError, match="logprobs for 1 of 2 sampled tokens"):
        _sampled_logprobs(SimpleNamespace(token_ids=[5, 9], logprobs=per_position[:1]))


def _batch(prompts, completions, **columns) -> RewardBatch:
    n = len(completions)
    return RewardBatch(
        tuple(prompts),
        tuple(completions),
        {k: tuple(v) for k, v in columns.items()},
        completion_ids=tuple((1,) * (i + 1) for i in range(n)),
        step=3,
        max_steps=10,
    )


def test_trl_reward_functions_run_unchanged_on_conversational_batches():
    specs = [
        RewardSpec(name="trl.rewards:accuracy_reward"),
        RewardSpec(name="trl.rewards:think_format_reward"),
        RewardSpec(
            name="trl.rewards:get_soft_overlong_punishment", kwargs={"max_completion_len": 4, "soft_punish_cache": 2}
        ),
        RewardSpec(name="exact_match"),
        RewardSpec(name="tests.real_models:reply_contains_answer"),
    ]
    completions = ["<think>\nadd\n</think>\n\\boxed{47}", "\\boxed{47}", "\\boxed{48}", "x"]
    answers = ["47", "\\boxed{47}", "47", None]
    batch = _batch([tuple(MESSAGES)] * 4, completions, solution=["$47$"] * 4, answer=answers)
    scores = RewardWorker(specs, "fail_run", 30.0).score(batch)
    c = scores.components
    assert c["trl.rewards:accuracy_reward"] == (1.0, 1.0, 0.0, 0.0)
    assert c["trl.rewards:think_format_reward"] == (1.0, 0.0, 0.0, 0.0)
    assert c["trl.rewards:get_soft_overlong_punishment"] == (0.0, 0.0, -0.5, -1.0)  # 1, 2, 3, 4 tokens
    assert c["exact_match"] == (0.0, 1.0, 0.0, None)
    assert scores.logged_metrics == {"reply_chars": sum(map(len, completions)) / 4}
    assert scores.logged_columns["reply_tokens"] == (1, 2, 3, 4)  # accuracy_reward logs columns of its own too
    assert scores.logged_columns["solution"] == ("$47$",) * 4


def test_string_prompts_give_string_completions_as_trl_does():
    seen = {}

    def spy(prompts, completions, trainer_state, **kwargs):
        seen.update(prompts=prompts, completions=completions, step=trainer_state.global_step)
        return [0.0] * len(completions)

    import tests.real_models as module

    module.spy = spy
    RewardWorker([RewardSpec(name="tests.real_models:spy")], "fail_run", 30.0).score(_batch(["1+2="], ["3"]))
    assert seen == {"prompts": ["1+2="], "completions": ["3"], "step": 3}
    RewardWorker([RewardSpec(name="tests.real_models:spy")], "fail_run", 30.0).score(_batch([tuple(MESSAGES)], ["47"]))
    assert seen["prompts"] == [MESSAGES] and seen["completions"] == [[{"role": "assistant", "content": "47"}]]


def test_a_reward_that_cannot_take_the_datas_format_fails_before_the_run(real_models):
    renderer, _ = _renderer(real_models["qwen2"])
    config = Config()
    row = {"prompt": MESSAGES, "answer": "47", "solution": "$47$"}
    check_rewards_on_row([RewardSpec(name="trl.rewards:accuracy_reward")], row, renderer, config)
    with pytest.raises(
        RewardFormatError, match=r"(?s)'tests.real_models:strip_only'.*AttributeError.*lists of messages"
    ):
        import tests.real_models as module

        module.strip_only = lambda prompts, completions, **kw: [float(c.strip() == "47") for c in completions]
        check_rewards_on_row([RewardSpec(name="tests.real_models:strip_only")], row, renderer, config)
    with pytest.raises(RewardFormatError, match="(?s)string indices must be integers.*as strings"):
        plain = {"prompt": "What is 12 + 35?", "solution": "$47$"}
        check_rewards_on_row([RewardSpec(name="trl.rewards:accuracy_reward")], plain, renderer, config)


def test_prolora_score_scores_conversational_rows(tmp_path):
    rows = [
        {
            "prompt": MESSAGES,
            "completion": [{"role": "assistant", "content": "\\boxed{47}"}],
            "solution": "$47$",
            "answer": None,
        },
        {"prompt": MESSAGES, "completion": "46", "solution": "$47$", "answer": "46"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = io.StringIO()
    specs = [RewardSpec(name="trl.rewards:accuracy_reward"), RewardSpec(name="exact_match")]
    assert score_file(load_config(), specs, path, out) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["trl.rewards:accuracy_reward"] for r in lines] == [1.0, 0.0]
    assert [r["exact_match"] for r in lines] == [None, 1.0]


def test_message_text_takes_either_format():
    assert message_text("x") == "x" and message_text([{"role": "assistant", "content": "y"}]) == "y"


def test_progress_says_when_most_completions_are_truncated():
    stream = io.StringIO()

    class First:
        pass_at_1, summary = 0.0, staticmethod(lambda: "pass@1 0.000")

    progress = Progress(3, First(), log_every=1, stream=stream)
    record = {"step": 1, "reward_mean": 0.0, "gen_tokens": 8, "gen_s": 1.0, "sync_ms": None}
    progress.update({**record, "truncated_frac": 0.25})
    assert "truncated" not in stream.getvalue()
    progress.update({**record, "step": 2, "truncated_frac": 0.75})
    progress.update({**record, "step": 3, "truncated_frac": 0.75})
    text = stream.getvalue()
    assert "truncated 75%" in text and text.count("warning: step 2: 75% of completions hit") == 1


def test_model_tokenizer_and_chat_template_come_from_the_config(real_models, tiny_model, tmp_path):
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}A:")
    config = load_config(overrides=[f"model.tokenizer={real_models['qwen2']}", "task.system_prompt=Short."])
    renderer = PromptRenderer.from_config(config, str(tiny_model))  # the tokenizer lives elsewhere
    assert renderer.render(MESSAGES).text.startswith("<|im_start|>system\nShort.")
    overridden = load_config(overrides=[f"model.chat_template={template}"])
    text = PromptRenderer.from_config(overridden, str(real_models["qwen2"])).render(MESSAGES).text
    assert text == "[user] What is 12 + 35?\nA:"


def test_hub_names_pass_and_missing_local_paths_do_not():
    from launch.rundir import looks_like_hub_name

    assert looks_like_hub_name("Qwen/Qwen3-0.6B") and looks_like_hub_name("LiquidAI/LFM2-1.2B")
    assert not any(map(looks_like_hub_name, ["/abs/model", "./x/y", "a/b/c", "model", "~/m/x"]))
