"""The packaged all-MiniLM-L6-v2, loaded offline with plain transformers, embeds like the real model."""

from __future__ import annotations

import numpy as np
import pytest

from potstill.operations.embeddings import DIMENSION, embed, model_path

TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "a beautiful and clever film .",
    "the stock market fell sharply on monday .",
    "",
    "long " * 600,  # past the 256-token limit: truncated, not an error
]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return embed(TEXTS, batch_size=2)


def test_shape_dtype_and_unit_norm(vectors):
    assert vectors.shape == (len(TEXTS), DIMENSION) == (5, 384)
    assert vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(len(TEXTS)), abs=1e-5)


def test_similar_sentences_are_closer_than_unrelated(vectors):
    sim = vectors @ vectors.T
    assert sim[0, 1] > 0.6
    assert sim[0, 2] < 0.3 and sim[1, 2] < 0.3
    assert sim[0, 1] > sim[0, 2] + 0.4


def test_order_and_batching_do_not_change_vectors(vectors):
    one_by_one = np.vstack([embed([t], batch_size=1) for t in reversed(TEXTS)])[::-1]
    assert one_by_one == pytest.approx(vectors, abs=1e-5)
    assert embed([]).shape == (0, DIMENSION)


def test_matches_sentence_transformers_when_installed(vectors):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(model_path()), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    assert np.abs(reference - vectors).max() < 1e-5
