"""The in-process teacher: a transformers causal LM scoring options and generating with log-probabilities.

`score` generalises `potstill.labeling.scoring.score_labels` (which returns only the normalised distribution
over one label set shared by every row) to raw log p(option | prompt) with per-prompt options, on token ids:

- prompt and option are tokenized separately and concatenated (the usual loglikelihood convention:
  the option's tokens are exactly the ones it would have after this prompt, independent of merges at
  the seam), which for prompts of the form prefix + body equals what `score_labels` computes;
- the longest common token prefix of all prompts (instructions, few-shot examples) is run once and its
  key/value cache reused by every batch;
- rows are sorted by length, padded on the right, and the LM head runs only at the positions read;
- `score_with_signals` reads, in the same forward, the top-k over the full vocabulary at every token of
  option + EOS (teacher-forced): the signals logit distillation of a closed kind stores.

`generate` is `model.generate` on left-padded, length-sorted batches with the raw logits kept
(`output_logits`): each token's log-probability and top-k alternatives are read from the model's own
distribution (temperature 1, no top-p), not the sampling one, so they mean the same thing for greedy
and sampled outputs and equal a plain forward pass over prompt + completion. On a GPU, `dtype=bfloat16`
and `compile=True` (a static KV cache, whose decode step transformers compiles on CUDA) cut the per-step
overhead of decoding; each new (batch, prompt width) shape compiles again, so it pays off on long runs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from potstill.labeling.teacher.base import Generation, SamplingSpec, TokenLogprobs


@dataclass(frozen=True)
class _Item:
    """One sequence to run: the body after the shared prefix and the (prompt, option, position, token)
    reads on it."""

    ids: list[int]
    reads: list[tuple[int, int, int, int]]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of all token sequences."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def _score_items(prompts: list[list[int]], options: list[list[list[int]]], offset: int) -> list[_Item]:
    """One item per prompt when all its options are single tokens (read at the last prompt token), else
    one per (prompt, option) whose last option token is not fed."""
    items = []
    for p, (ids, opts) in enumerate(zip(prompts, options, strict=True)):
        body = ids[offset:]
        last = offset + len(body) - 1
        if all(len(o) == 1 for o in opts):
            items.append(_Item(body, [(p, j, last, o[0]) for j, o in enumerate(opts)]))
            continue
        for j, o in enumerate(opts):
            items.append(_Item(body + o[:-1], [(p, j, last + k, tok) for k, tok in enumerate(o)]))
    return items


def _forced_items(prompts: list[list[int]], forced: list[list[list[int]]], offset: int) -> list[_Item]:
    """One item per (prompt, continuation) that feeds all but the last continuation token and reads every
    continuation token in order (teacher forcing)."""
    items = []
    for p, (ids, conts) in enumerate(zip(prompts, forced, strict=True)):
        body = ids[offset:]
        last = offset + len(body) - 1
        for j, c in enumerate(conts):
            items.append(_Item(body + c[:-1], [(p, j, last + k, tok) for k, tok in enumerate(c)]))
    return items


class TransformersBackend:
    """A `TeacherBackend` over a loaded transformers model (any device, any dtype)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        name: str | None = None,
        batch_size: int = 32,
        reuse_prefix: bool = True,
        cache_implementation: str | None = None,
        compile: bool = False,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.batch_size = batch_size
        self.reuse_prefix = reuse_prefix
        self.cache_implementation = cache_implementation
        self.compile = compile

    @classmethod
    def from_spec(
        cls,
        spec: str,
        device: str = "cpu",
        dtype: torch.dtype | str | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> TransformersBackend:
        """Load `package:<dist>`, a `.gguf` file, a model folder or a hub id; bf16 by default on CUDA."""
        from potstill.models import load_model

        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model, tokenizer = load_model(spec, dtype=dtype)
        return cls(model.to(device), tokenizer, name=name or spec, **kwargs)

    def __repr__(self) -> str:
        return f"TransformersBackend(name={self.name!r}, batch_size={self.batch_size})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def _pad(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    # ---- score

    @torch.no_grad()
    def score(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        scores, _ = self._score(prompts, options, top_k=0)
        return scores

    @torch.no_grad()
    def score_with_signals(
        self, prompts: Sequence[str], options: Sequence[Sequence[str]], top_k: int
    ) -> tuple[list[list[float]], list[list[tuple[TokenLogprobs, ...]]]]:
        """`score`, plus for every option the teacher-forced tokens of option + EOS, each with its
        log-probability and the top-k alternatives over the full vocabulary (teacher signals for logit
        distillation of a closed kind). Read from the scoring forward itself: each option is fed whole
        (one more token than scoring needs, for the EOS position), so the extra cost is that token and a
        top-k at the read positions; single-token options lose their one-item-per-prompt shortcut."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        return self._score(prompts, options, top_k=top_k)

    def _score(
        self, prompts: Sequence[str], options: Sequence[Sequence[str]], top_k: int
    ) -> tuple[list[list[float]], list[list[tuple[TokenLogprobs, ...]]]]:
        if len(prompts) != len(options):
            raise ValueError(f"{len(prompts)} prompts but {len(options)} option lists")
        if not prompts:
            return [], []
        prompt_ids = [self._encode(p) for p in prompts]
        if any(not p for p in prompt_ids):
            raise ValueError("an empty prompt has nothing to condition the first option token on")
        option_ids = [[self._encode(o) for o in opts] for opts in options]
        if any(not o for opts in option_ids for o in opts):
            raise ValueError("an option tokenizes to nothing")
        eos = self.tokenizer.eos_token_id
        if top_k and eos is None:
            raise ValueError("teacher signals end with EOS, but the tokenizer has no eos_token_id")
        # Keep at least one body token per row: it is where single-token options are read.
        offset = common_prefix_len(prompt_ids) if self.reuse_prefix else 0
        offset = min(offset, min(len(p) for p in prompt_ids) - 1)
        prefix_cache = None
        if offset > 0:
            prefix = torch.tensor([prompt_ids[0][:offset]], device=self.device)
            prefix_cache = self.model(prefix, use_cache=True).past_key_values
        if top_k:  # option tokens then EOS, all read: the EOS read is a signal, not part of the score
            items = _forced_items(prompt_ids, [[[*o, eos] for o in opts] for opts in option_ids], offset)
        else:
            items = _score_items(prompt_ids, option_ids, offset)
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        scores = [[0.0] * len(opts) for opts in options]
        forced: list[list[list[TokenLogprobs]]] = [[[] for _ in opts] for opts in options]
        backbone = self.model.get_decoder()
        head = self.model.get_output_embeddings()
        for start in range(0, len(order), self.batch_size):
            batch = [items[i] for i in order[start : start + self.batch_size]]
            width = max(len(it.ids) for it in batch)
            input_ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, it in enumerate(batch):
                input_ids[b, : len(it.ids)] = torch.tensor(it.ids)
                mask[b, : len(it.ids)] = 1
            kwargs: dict[str, Any] = {}
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)  # the cache grows in place: one fresh copy per batch
                cache.batch_repeat_interleave(len(batch))
                mask = torch.cat([torch.ones((len(batch), offset), dtype=torch.long), mask], dim=1)
                kwargs["past_key_values"] = cache
            hidden = backbone(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                use_cache=prefix_cache is not None,
                **kwargs,
            ).last_hidden_state
            where = [
                (b, p, j, pos - offset, tok) for b, it in enumerate(batch) for p, j, pos, tok in it.reads
            ]
            rows = torch.tensor([w[0] for w in where], device=self.device)
            cols = torch.tensor([w[3] for w in where], device=self.device)
            toks = torch.tensor([w[4] for w in where], device=self.device)
            logp = torch.log_softmax(head(hidden[rows, cols]).float(), dim=-1)
            picked = logp[torch.arange(len(where), device=self.device), toks].double().cpu().tolist()
            if top_k:
                top_vals, top_ids = (t.cpu().tolist() for t in logp.topk(top_k, dim=-1))
            for n, ((_, p, j, _, tok), lp) in enumerate(zip(where, picked, strict=True)):
                if not top_k:
                    scores[p][j] += lp
                    continue
                seq = forced[p][j]
                if len(seq) < len(option_ids[p][j]):  # the option's own tokens; the last read is EOS
                    scores[p][j] += lp
                top = tuple(zip(top_ids[n], top_vals[n], strict=True))
                seq.append(TokenLogprobs(self.tokenizer.decode([tok]), float(lp), int(tok), top))
        return scores, [[tuple(seq) for seq in per_prompt] for per_prompt in forced]

    # ---- generate

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], spec: SamplingSpec) -> list[list[Generation]]:
        if spec.n < 1:
            raise ValueError("spec.n must be at least 1")
        prompt_ids = [self._encode(p) for p in prompts]
        if any(not p for p in prompt_ids):
            raise ValueError("an empty prompt gives the model nothing to continue")
        out: list[list[Generation]] = [[] for _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
        per_batch = max(1, self.batch_size // spec.n)  # each prompt becomes n rows
        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            for i, gens in zip(idx, self._generate_batch([prompt_ids[i] for i in idx], spec), strict=True):
                out[i] = gens
        return out

    def _generate_batch(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[list[Generation]]:
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for b, p in enumerate(prompt_ids):  # left padding: every row's next token is at the same column
            input_ids[b, width - len(p) :] = torch.tensor(p)
            mask[b, width - len(p) :] = 1
        eos = self.tokenizer.eos_token_id
        kwargs: dict[str, Any] = {
            "max_new_tokens": spec.max_new_tokens,
            "num_return_sequences": spec.n,
            "return_dict_in_generate": True,
            "output_logits": True,
            "pad_token_id": self._pad,
            "eos_token_id": eos,
        }
        if spec.temperature > 0:
            kwargs.update(do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if spec.stop:
            kwargs.update(stop_strings=list(spec.stop), tokenizer=self.tokenizer)
        # A static cache is compileable: transformers then compiles the decode step itself (on CUDA), unless
        # told not to; `compile=True` asks for exactly that, `compile=False` keeps a static cache eager.
        cache = self.cache_implementation or ("static" if self.compile else None)
        if cache:
            kwargs["cache_implementation"] = cache
            kwargs["disable_compile"] = not self.compile
        res = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
        )
        new = res.sequences[:, width:].cpu()
        logp = torch.log_softmax(torch.stack(res.logits, dim=1).float(), dim=-1).cpu()  # rows × steps × V
        k = spec.top_logprobs
        top_vals, top_ids = logp.topk(k, dim=-1) if k > 0 else (None, None)
        ends = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        gens: list[list[Generation]] = [[] for _ in prompt_ids]
        for r in range(new.shape[0]):
            ids, finish = new[r].tolist(), "length"
            end = next((s for s, t in enumerate(ids) if t in ends), None)
            if end is not None:  # generate pads a finished row: everything after its EOS is filler
                ids, finish = ids[:end], "stop"
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            cut = min((c for c in (text.find(s) for s in spec.stop) if c >= 0), default=-1)
            if cut >= 0:  # OpenAI semantics: the stop string is not part of the text
                text, finish = text[:cut], "stop"
                stop_at = self._tokens_until(ids, spec.stop)
                ids = ids[:stop_at]
            toks = []
            for s, tid in enumerate(ids):
                top: tuple[tuple[int | str, float], ...] = ()
                if top_vals is not None and top_ids is not None:
                    pairs = zip(top_ids[r, s].tolist(), top_vals[r, s].tolist(), strict=True)
                    top = tuple((int(a), float(v)) for a, v in pairs)
                toks.append(TokenLogprobs(self.tokenizer.decode([tid]), float(logp[r, s, tid]), tid, top))
            gens[r // spec.n].append(Generation(text, tuple(toks), finish))
        return gens

    def _tokens_until(self, ids: list[int], stops: Sequence[str]) -> int:
        """How many tokens it takes for the decoded text to contain a stop string (they are kept)."""
        for i in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:i], skip_special_tokens=True)
            if any(s in text for s in stops):
                return i
        return len(ids)
