"""Tiny BERT encoders built by the tests: random weights and a WordPiece tokenizer trained on a few sentences
(English and Korean), saved as a transformers directory. For the BERTScore and learned-metric rewards."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the quick brown fox jumps over the lazy dog",
    "서울은 한국의 수도이다",
    "나는 학교에 갔다",
    "맞춤법에 맞는 문장은 다음과 같다",
    "철수가 밥을 먹었다",
    "띄어쓰기가 옳다",
] * 4
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tokenizer():
    """A BERT-style fast tokenizer: WordPiece over CORPUS, [CLS] a [SEP] b [SEP] with segment ids for pairs."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=SPECIAL))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def _config(vocab_size: int, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **extra,
    )


def build_encoder(path: Path, seed: int = 0) -> Path:
    """A random 3-layer BERT encoder and its tokenizer at `path` (for `bertscore`)."""
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    BertModel(_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_pair_regressor(path: Path, seed: int = 0) -> Path:
    """A random BERT regression head (num_labels=1) scoring text pairs, BLEURT-style (for `reward_model`)."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    BertForSequenceClassification(_config(len(tokenizer), num_labels=1)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
