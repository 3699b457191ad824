"""What each text-metric reward costs: milliseconds per 1,000 completions on this machine.

    python -m launch.tools.reward_cost [--rows 1000] [--size tiny|base] [--encoder DIR] [--regressor DIR]

Scores `--rows` completions (the Korean sample file of the korean_qa recipe, repeated) with each reward, in this
process: ROUGE through the reward functions, BERTScore through `BertScorer` and a learned metric through
`RewardModelScorer` (the bodies of their actors; a run adds one Ray call per batch on top). Without `--encoder` /
`--regressor` the models are random BERTs of the `--size` shape built here (`base`: 12 layers of 768, the
bert-base shape, whose compute a real checkpoint of that shape matches; `tiny`: 3 layers of 32), with a WordPiece
vocabulary trained on the sample. Prints one JSON line per reward.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from learner.rewards.bertscore import BertScorer
from learner.rewards.reward_model import RewardModelScorer
from learner.rewards.rouge import rouge_reward
from shared.config import RougeConfig

SAMPLE = Path(__file__).resolve().parents[1] / "configs" / "korean_qa_sample.jsonl"
SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}


def sample_rows(n: int) -> list[dict]:
    """`n` rows of the sample file, repeated; each completion made unique (a row number appended) so that no
    model-based reward gets its work cut by texts it has already embedded, as in a run, where completions differ."""
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    return [{**rows[i % len(rows)], "completion": f"{rows[i % len(rows)]['completion']} {i}"} for i in range(n)]


def build_models(directory: Path, size: str, texts: list[str]) -> tuple[str, str]:
    """A random encoder and a random pair regressor of the `size` shape, sharing a WordPiece tokenizer on `texts`."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=512, **{
        f"{name}_token": f"[{name.upper()}]" for name in ("unk", "sep", "pad", "cls", "mask")
    })  # fmt: skip
    torch.manual_seed(0)
    shape = SHAPES[size]
    config = BertConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        intermediate_size=shape["intermediate_size"],
    )
    encoder, regressor = directory / "encoder", directory / "regressor"
    BertModel(config).save_pretrained(encoder)
    config.num_labels = 1
    BertForSequenceClassification(config).save_pretrained(regressor)
    for path in (encoder, regressor):
        tokenizer.save_pretrained(path)
    return str(encoder), str(regressor)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(rows: list[dict], encoder: str, regressor: str) -> Iterator[dict]:
    """Each reward's seconds on `rows`, with milliseconds per 1,000 completions, as soon as it is timed."""
    completions = [r["completion"] for r in rows]
    references: list[list[str] | None] = [[r["reference"]] for r in rows]
    prompts = [""] * len(rows)
    for kind in ("rouge1", "rouge2", "rougeL"):
        for tokenizer in ("auto", "whitespace"):
            reward = rouge_reward(kind, RougeConfig(tokenizer=tokenizer))
            seconds = _timed(lambda: reward(prompts, completions, reference=references))  # noqa: B023
            yield _result(kind, {"tokenizer": tokenizer}, seconds, len(rows))
    bert = BertScorer(encoder)
    yield _result("bertscore", {"model": encoder}, _timed(lambda: bert.score(completions, references)), len(rows))
    metric = RewardModelScorer(regressor, pair_format="reference_candidate", max_length=256)
    seconds = _timed(lambda: metric.score(prompts, completions, references))
    yield _result("reward_model (reference_candidate)", {"model": regressor}, seconds, len(rows))


def _result(reward: str, setting: dict, seconds: float, rows: int) -> dict:
    return {
        "reward": reward,
        **setting,
        "rows": rows,
        "seconds": seconds,
        "ms_per_1000": round(seconds * 1e6 / rows, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--size", choices=sorted(SHAPES), default="base")
    parser.add_argument("--encoder", help="encoder directory for bertscore (default: a random one of --size)")
    parser.add_argument("--regressor", help="pair regressor directory (default: a random one of --size)")
    args = parser.parse_args(argv)
    rows = sample_rows(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        texts = [r[k] for r in rows[:50] for k in ("prompt", "completion", "reference")]
        built = build_models(Path(tmp), args.size, texts) if not (args.encoder and args.regressor) else ("", "")
        encoder, regressor = args.encoder or built[0], args.regressor or built[1]
        for result in measure(rows, encoder, regressor):
            print(json.dumps(result, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
