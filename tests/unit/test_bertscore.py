"""BERTScore against the `bert-score` package on a tiny encoder the test builds (English and Korean), and an
independent per-pair computation written out here for what that package cannot do under transformers 5 (empty
candidates) or does differently (several references)."""

from __future__ import annotations

import pytest
import torch

from learner.rewards.bertscore import BertScorer
from tests.tiny_encoders import build_encoder

CANDIDATES = ["the cat sat on the mat", "서울은 한국의 수도", "cat", "dog park", "나는 학교에 갔다"]
REFERENCES = [
    "the cat sat on a mat",
    "서울은 한국의 수도이다",
    "the dog",
    "a dog ran in the park",
    "철수가 학교에 갔다",
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return build_encoder(tmp_path_factory.mktemp("encoder"))


@pytest.mark.parametrize(("layer", "idf"), [(2, False), (2, True), (None, True)])
def test_equals_the_bert_score_package(encoder, layer, idf):
    bert_score = pytest.importorskip("bert_score")
    ours = BertScorer(str(encoder), layer=layer, idf=idf, batch_size=2).score(CANDIDATES, [[r] for r in REFERENCES])
    _, _, f1 = bert_score.score(
        CANDIDATES, REFERENCES, model_type=str(encoder), num_layers=layer or 3, idf=idf, nthreads=0, device="cpu"
    )
    assert ours == pytest.approx(f1.tolist(), abs=1e-5)
    assert len({round(v, 4) for v in ours}) == len(ours)


def _independent_f1(path, candidate: str, reference: str, layer: int) -> float:
    """One pair, unbatched: embeddings of `layer`; every token (special ones too, as in bert-score) may be matched,
    and the means run over the tokens between [CLS] and [SEP]."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed(text):
        enc = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden_TD = model(**enc, output_hidden_states=True).hidden_states[layer][0]
        return torch.nn.functional.normalize(hidden_TD, dim=-1)

    c, r = embed(candidate), embed(reference)
    if len(c) == 2 or len(r) == 2:
        return 0.0
    sim = c @ r.T
    p, rec = sim.max(dim=1).values[1:-1].mean(), sim.max(dim=0).values[1:-1].mean()
    return float(2 * p * rec / (p + rec))


def test_best_of_several_references_empty_and_missing(encoder):
    scorer = BertScorer(str(encoder), layer=1)
    refs = [["a dog ran in the park", "dog"], ["the cat"], None, ["서울은 한국의 수도이다"]]
    got = scorer.score(["dog park", "", "anything", "서울은 한국의 수도"], refs)
    assert got[0] == pytest.approx(max(_independent_f1(encoder, "dog park", r, 1) for r in refs[0]), abs=1e-5)
    assert got[1] == 0.0 and got[2] is None
    assert got[3] == pytest.approx(_independent_f1(encoder, "서울은 한국의 수도", refs[3][0], 1), abs=1e-5)


def test_layer_out_of_range_is_refused(encoder):
    with pytest.raises(ValueError, match="layers 1..3"):
        BertScorer(str(encoder), layer=4)
