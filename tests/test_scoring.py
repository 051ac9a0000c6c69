"""Batched, prefix-cached label scoring against a naive one-row-at-a-time reference."""

import math

import pytest
import torch

from potstill.labeling.scoring import label_token_ids, score_labels
from potstill.prompts import PromptTemplate, label_completion

TEMPLATE = PromptTemplate(
    "t",
    "Classify the sentiment.\n\nReview: great fun .\nSentiment: positive\n\n"
    "Review: a dull mess .\nSentiment: negative\n\nReview: {text}\nSentiment:",
)
ROWS = [
    {"text": "a gorgeous , witty film ."},
    {"text": "it's as dull as dishwater and twice as murky , with nothing to say and no way to say it ."},
    {"text": "fine ."},
    {"text": "the performances are uniformly excellent , and the script is smart and funny ."},
    {"text": "bad"},
]


@torch.no_grad()
def naive_scores(model, tokenizer, prompt, rows, labels):
    """From the definition: full prompt, one row at a time, no cache, sum of label-token log-probs."""
    out = []
    for row in rows:
        text = prompt.render(row)
        logps = []
        for lab in labels:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            lab_ids = tokenizer(label_completion(lab), add_special_tokens=False)["input_ids"]
            full = torch.tensor([ids + lab_ids])
            logits = model(full).logits[0].double()
            lp = torch.log_softmax(logits, -1)
            logps.append(sum(float(lp[len(ids) - 1 + k, t]) for k, t in enumerate(lab_ids)))
        z = max(logps)
        probs = [math.exp(v - z) for v in logps]
        out.append({lab: p / sum(probs) for lab, p in zip(labels, probs, strict=True)})
    return out


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_batched_scoring_matches_naive_reference(tiny_model, tokenizer, reuse, batch_size):
    labels = ["negative", "positive"]
    prefix, _ = TEMPLATE.split()
    got = score_labels(
        tiny_model,
        tokenizer,
        prefix,
        [TEMPLATE.render_row(r) for r in ROWS],
        labels,
        batch_size=batch_size,
        reuse_prefix=reuse,
    )
    want = naive_scores(tiny_model, tokenizer, TEMPLATE, ROWS, labels)
    for g, w in zip(got, want, strict=True):
        assert g.distribution == pytest.approx(w, abs=1e-5)
        assert g.label == max(w, key=w.get)
        assert g.confidence == pytest.approx(max(w.values()), abs=1e-5)


def test_multi_token_labels_match_naive_reference(tiny_model, tokenizer):
    labels = ["entailment", "neutral", "contradiction", "very positive"]
    assert any(len(t) > 1 for t in label_token_ids(tokenizer, labels))
    prefix, _ = TEMPLATE.split()
    seen = []
    got = score_labels(
        tiny_model,
        tokenizer,
        prefix,
        [TEMPLATE.render_row(r) for r in ROWS],
        labels,
        batch_size=3,
        progress=seen.append,
    )
    want = naive_scores(tiny_model, tokenizer, TEMPLATE, ROWS, labels)
    for g, w in zip(got, want, strict=True):
        assert g.distribution == pytest.approx(w, abs=1e-5)
    assert sum(seen) == len(ROWS)


def test_prefix_ends_where_the_row_begins(tokenizer):
    """Split tokenization equals whole-prompt tokenization at the seam (the row keeps its leading space)."""
    prefix, body = TEMPLATE.split()
    assert prefix.endswith("Review:") and body.startswith(" {text}")
    for row in ROWS:
        whole = tokenizer(TEMPLATE.render(row), add_special_tokens=False)["input_ids"]
        parts = (
            tokenizer(prefix, add_special_tokens=False)["input_ids"]
            + tokenizer(TEMPLATE.render_row(row), add_special_tokens=False)["input_ids"]
        )
        assert parts == whole


def test_labels_that_tokenize_alike_are_refused(tokenizer):
    with pytest.raises(ValueError, match="tokenize the same"):
        label_token_ids(tokenizer, ["positive", "positive"])
