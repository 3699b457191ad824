"""Rewards that need other actors, against independent computations (real Ray, vLLM and transformers).

- `reward_model`: the reward-model actor's scores equal a direct transformers forward of each prompt + completion,
  one text at a time (the actor batches and pads; tolerance 1e-4 for float32 summation order).
- `reward_model` with `pair_format: reference_candidate` (a BLEURT-style learned metric): the actor's scores equal a
  direct forward of the tokenizer's text pair (reference, completion), best over several references.
- `bertscore`: the BERTScore actor, reached by a reward actor through its RewardContext, gives what `BertScorer`
  gives in this process (itself checked against the bert-score package in tests/unit/test_bertscore.py).
- `cycle_consistency`, run in a reward actor: its value equals chrF++ of the back-translation that a rollout worker
  gives when asked directly with the reverse prompt written out here.
"""

from __future__ import annotations

import pytest
import torch
from sacrebleu.metrics import CHRF

from launch.actors import (
    reward_context,
    start_bertscore,
    start_reward_actors,
    start_reward_model,
    start_rollout_workers,
)
from learner.rewards import RewardContext, RewardWorker
from shared.config import RewardSpec, load_config
from shared.records import RewardBatch, SamplingSpec
from shared.tasks import get_task
from tests.tiny_encoders import build_encoder, build_pair_regressor


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    from transformers import LlamaForSequenceClassification

    from launch.basemodel import build_tokenizer, model_config

    torch.manual_seed(0)
    config = model_config()
    config.num_labels = 1
    path = tmp_path_factory.mktemp("reward-model")
    LlamaForSequenceClassification(config).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def _direct_scores(path, texts: list[str]) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(**tokenizer(t, return_tensors="pt")).logits[0, 0].item() for t in texts]


def test_reward_model_actor_matches_a_direct_forward(reward_model_dir, ray_session):
    config = load_config(
        overrides=[f"rewards.reward_model.path={reward_model_dir}", "rewards.reward_model.batch_size=3"]
    )
    actor = start_reward_model(config)
    prompts = ["123+456=", "1+1=", "S:kina te mo susi\nT:", "", "7+8=", "x", "a longer prompt, with words"]
    completions = ["579", "2", "vag vyge fefin vifyz", "only a completion", "", "y" * 40, "!"]
    specs = [RewardSpec(name="reward_model", weight=0.5)]
    worker = RewardWorker(specs, "fail_run", 60.0, RewardContext(reward_model=actor))
    scores = worker.score(RewardBatch(tuple(prompts), tuple(completions)))

    expected = _direct_scores(reward_model_dir, [p + c for p, c in zip(prompts, completions, strict=True)])
    assert scores.components["reward_model"] == pytest.approx(expected, abs=1e-4)
    assert scores.total == pytest.approx([0.5 * e for e in expected], abs=1e-4)
    assert len(set(round(e, 4) for e in expected)) > 1  # a random model still tells texts apart
    ray_session.kill(actor)


def test_reward_model_reads_chat_prompts_through_its_own_template(reward_model_dir, tmp_path, ray_session):
    """TRL's conversational rows: the reward model sees the conversation with the completion as the assistant's turn,
    rendered by its own chat template, with no special tokens added on top."""
    import shutil

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path / "chat-reward-model"
    shutil.copytree(reward_model_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(path)
    actor = start_reward_model(load_config(overrides=[f"rewards.reward_model.path={path}"]))
    prompts = (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="}],
        [{"role": "user", "content": "2+2="}],
    )
    completions = ("2", "4")
    worker = RewardWorker([RewardSpec(name="reward_model")], "fail_run", 60.0, RewardContext(reward_model=actor))
    scores = worker.score(RewardBatch(prompts, completions))

    texts = ["[system] Be brief.\n[user] 1+1=\n[assistant] 2\n", "[user] 2+2=\n[assistant] 4\n"]
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = [
            model(**tokenizer(t, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item() for t in texts
        ]
    assert scores.components["reward_model"] == pytest.approx(expected, abs=1e-4)
    ray_session.kill(actor)


def test_learned_metric_scores_reference_candidate_pairs(tmp_path, ray_session):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = build_pair_regressor(tmp_path / "bleurt-like")
    overrides = [f"rewards.reward_model.path={path}", "rewards.reward_model.pair_format=reference_candidate"]
    actor = start_reward_model(load_config(overrides=overrides))
    context = RewardContext(reward_model=actor)
    completions = ("the cat sat on the mat", "dog", "서울은 한국의 수도", "no reference here")
    references = ("the cat is on the mat", ["a dog ran", "the dog"], "서울은 한국의 수도이다", None)
    batch = RewardBatch(("",) * 4, completions, {"reference": references})
    scores = RewardWorker([RewardSpec(name="reward_model")], "fail_run", 60.0, context).score(batch)

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()

    def direct(reference: str, candidate: str) -> float:
        with torch.no_grad():
            return model(**tokenizer(reference, candidate, return_tensors="pt")).logits[0, 0].item()

    expected = [
        direct(references[0], completions[0]),
        max(direct(r, completions[1]) for r in references[1]),
        direct(references[2], completions[2]),
        None,
    ]
    assert scores.components["reward_model"] == pytest.approx(expected, abs=1e-4)
    assert direct("a", "b") != pytest.approx(direct("b", "a"), abs=1e-6)  # the order of the pair matters
    ray_session.kill(actor)


def test_bertscore_actor_through_the_reward_context(tmp_path, ray_session):
    from learner.rewards.bertscore import BertScorer

    path = build_encoder(tmp_path / "encoder")
    config = load_config(overrides=[f"rewards.bertscore.model={path}", "rewards.bertscore.layer=2"])
    actor = start_bertscore(config)
    (rewarder,) = start_reward_actors(config, [RewardSpec(name="bertscore")], reward_context(config, [], None, actor))
    completions = ("the cat sat on the mat", "서울은 한국의 수도", "dog", "x")
    references = ("the cat is on the mat", "서울은 한국의 수도이다", ["a dog ran", "dog"], None)
    scores = ray_session.get(rewarder.score.remote(RewardBatch(("",) * 4, completions, {"reference": references})))

    expected = BertScorer(str(path), layer=2).score(
        list(completions), [[r] if isinstance(r, str) else r for r in references]
    )
    assert scores.components["bertscore"] == pytest.approx(expected, abs=1e-6)
    assert expected[3] is None and all(0 < v <= 1 + 1e-6 for v in expected[:3])
    ray_session.kill(rewarder)
    ray_session.kill(actor)


@pytest.fixture(scope="module")
def translate_fleet(tiny_translate_model, ray_session):
    overrides = [
        "task.name=translate",
        "rollout.num_workers=2",
        "model.max_model_len=128",
        "rollout.max_new_tokens=32",
        "rewards.timeout_s=300",
    ]
    config = load_config(overrides=overrides)
    workers = start_rollout_workers(config, str(tiny_translate_model))
    ray_session.get([w.tokenizer_eos_id.remote() for w in workers])  # engines started: timeouts measure scoring only
    yield config, workers
    for worker in workers:
        ray_session.kill(worker)


def test_cycle_consistency_scores_the_models_own_back_translation(translate_fleet, ray_session):
    config, workers = translate_fleet
    rows = get_task("translate").heldout_rows(6, 0)
    completions = [
        rows[0]["reference"],
        " " + rows[1]["reference"],
        "",
        "vag vag vag",
        rows[4]["reference"][::-1],
        rows[5]["reference"],
    ]
    sources = [r["source"] for r in rows[:5]] + [None]
    (rewarder,) = start_reward_actors(config, [RewardSpec(name="cycle_consistency")], reward_context(config, workers))
    batch = RewardBatch(tuple(r["prompt"] for r in rows), tuple(completions), {"source": tuple(sources)})
    scores = ray_session.get(rewarder.score.remote(batch))

    greedy = SamplingSpec(n=1, max_tokens=32, temperature=0.0)
    groups = ray_session.get(workers[0].generate.remote([f"T:{c.strip()}\nS:" for c in completions[:5]], greedy))
    back = [g.completions[0].text.strip() for g in groups]
    expected = [CHRF(word_order=2).sentence_score(b, [s]).score / 100 for b, s in zip(back, sources, strict=False)]
    assert scores.components["cycle_consistency"] == pytest.approx([*expected, None])
    assert scores.failures == {"cycle_consistency": 0}
    assert max(expected) > 0, f"no back-translation overlaps its source, a trivial comparison: {back}"
    ray_session.kill(rewarder)


def test_cycle_consistency_renders_its_prompts_as_the_run_does(translate_fleet, tiny_translate_model, ray_session):
    """With chat prompts, the back-translation prompt (task.back_translation_prompt's instruction around the
    completion) goes to the engine through the chat template as a user turn."""
    from shared.chat import PromptRenderer, load_tokenizer

    fleet_config, workers = translate_fleet
    instruction = "Translate back into the source language:\n{text}"
    config = fleet_config.model_copy(
        update={"task": fleet_config.task.model_copy(update={"back_translation_prompt": instruction})}
    )
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    renderer = PromptRenderer(load_tokenizer(str(tiny_translate_model)), chat_template=template)
    rows = get_task("translate").heldout_rows(4, 0)
    completions = [r["reference"] for r in rows]
    context = reward_context(config, workers, render=renderer.render_user_turn)
    (rewarder,) = start_reward_actors(config, [RewardSpec(name="cycle_consistency")], context)
    batch = RewardBatch(
        tuple(r["prompt"] for r in rows), tuple(completions), {"source": tuple(r["source"] for r in rows)}
    )
    scores = ray_session.get(rewarder.score.remote(batch))

    greedy = SamplingSpec(n=1, max_tokens=32, temperature=0.0)
    asked = [instruction.replace("{text}", c.strip()) for c in completions]
    rendered = [renderer.render_user_turn(text) for text in asked]
    assert rendered[0].text.startswith("<user>Translate back into the source language:\n") and rendered[0].messages == (
        {"role": "user", "content": asked[0]},
    )
    back = [g.completions[0].text.strip() for g in ray_session.get(workers[0].generate.remote(rendered, greedy))]
    expected = [
        CHRF(word_order=2).sentence_score(b, [r["source"]]).score / 100 for b, r in zip(back, rows, strict=True)
    ]
    assert scores.components["cycle_consistency"] == pytest.approx(expected)
    ray_session.kill(rewarder)
