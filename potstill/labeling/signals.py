"""Teacher signals for later distillation: the top-k log-probabilities at every position of the answer.

Offline logit distillation needs, per answer token, the teacher's best k alternatives and how much
probability they leave out. Stored columnar, one `.npz` file per shard (numpy's zip of arrays: no pickle,
readable anywhere), so a shard of labels and its signals are written and resumed together:

| array          | dtype   | shape  | meaning                                              |
|----------------|---------|--------|------------------------------------------------------|
| `row_ids`      | unicode | [R]    | JSON of each row id (ids keep their type on reading) |
| `offsets`      | int64   | [R+1]  | row r owns positions offsets[r]:offsets[r+1]          |
| `token_ids`    | int32   | [P]    | the token the teacher emitted                        |
| `logprobs`     | float16 | [P]    | its log-probability                                   |
| `top_ids`      | int32   | [P, k] | the k best token ids, best first (-1 pads)            |
| `top_logprobs` | float16 | [P, k] | their log-probabilities (-inf pads)                   |
| `tail`         | float16 | [P]    | 1 - sum(exp(top_logprobs)), clipped at 0              |

At k=64 a position costs 4 + 2 + 64·(4 + 2) + 2 = 392 bytes before compression; `write_signals` reports
the measured bytes per token of the file it wrote.

Generative kinds store the generated tokens; closed kinds (classification, NLI, multiple choice) store
the chosen label's completion (" <label>" then EOS) teacher-forced, which is exactly what the student
is trained on. `load_signals` reads a whole run folder back by row id for
`potstill.training.methods.logit_offline`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from potstill.files import atomic_write
from potstill.labeling.teacher.base import TokenLogprobs

DEFAULT_TOP_K = 64


def tail_mass(top_logprobs: Any) -> np.ndarray:
    """1 − Σ exp(top-k log-probabilities) over the last axis, clipped to [0, 1] (fp16 and top-p sampling
    rounding can make the sum exceed 1 slightly; -inf pads contribute 0)."""
    lp = np.asarray(top_logprobs, dtype=np.float64)
    return np.clip(1.0 - np.exp(lp).sum(axis=-1), 0.0, 1.0)


@dataclass
class RowSignals:
    row_id: Any
    token_ids: np.ndarray  # int32 [T]
    logprobs: np.ndarray  # float16 [T]
    top_ids: np.ndarray  # int32 [T, k]
    top_logprobs: np.ndarray  # float16 [T, k]
    tail: np.ndarray  # float16 [T]

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])


@dataclass(frozen=True)
class SignalStats:
    path: Path
    rows: int
    tokens: int
    bytes: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else 0.0


def from_tokens(row_id: Any, tokens: Sequence[TokenLogprobs], k: int = DEFAULT_TOP_K) -> RowSignals:
    """Columnar signals of one answer. Needs token ids (a text-only server's alternatives cannot be put
    in the student's vocabulary without its tokenizer: ValueError)."""
    top_ids = np.full((len(tokens), k), -1, dtype=np.int32)
    top_lp = np.full((len(tokens), k), -np.inf, dtype=np.float32)
    for p, t in enumerate(tokens):
        if t.token_id is None:
            raise ValueError(f"row {row_id!r}: token {t.token!r} has no id; signals need token ids")
        alts = t.top[:k]
        if any(not isinstance(a, int) for a, _ in alts):
            raise ValueError(f"row {row_id!r}: top-k alternatives are text, not token ids")
        if alts:
            top_ids[p, : len(alts)] = [a for a, _ in alts]
            top_lp[p, : len(alts)] = [v for _, v in alts]
    return RowSignals(
        row_id,
        np.array([t.token_id for t in tokens], dtype=np.int32),
        np.array([t.logprob for t in tokens], dtype=np.float16),
        top_ids,
        top_lp.astype(np.float16),
        tail_mass(top_lp).astype(np.float16),
    )


def write_signals(path: Path, rows: Sequence[RowSignals], compress: bool = True) -> SignalStats:
    """Write one shard's signals atomically (temp file, fsync, rename); returns its size per token."""

    k = max((r.top_ids.shape[1] for r in rows), default=0)
    if any(r.top_ids.shape[1] != k for r in rows):
        raise ValueError("every row of a shard must have the same k")
    lengths = [r.n_tokens for r in rows]
    arrays = {
        "row_ids": np.array([json.dumps(r.row_id) for r in rows], dtype=np.str_),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "token_ids": _cat([r.token_ids for r in rows], np.int32, (0,)),
        "logprobs": _cat([r.logprobs for r in rows], np.float16, (0,)),
        "top_ids": _cat([r.top_ids for r in rows], np.int32, (0, k)),
        "top_logprobs": _cat([r.top_logprobs for r in rows], np.float16, (0, k)),
        "tail": _cat([r.tail for r in rows], np.float16, (0,)),
    }
    save = np.savez_compressed if compress else np.savez
    atomic_write(path, lambda f: save(f, **arrays))
    return SignalStats(path, len(rows), sum(lengths), path.stat().st_size)


def _cat(parts: list[np.ndarray], dtype: type, empty: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty, dtype=dtype)


def read_signals(path: Path) -> list[RowSignals]:
    with np.load(path, allow_pickle=False) as z:
        a = {name: z[name] for name in z.files}
    off = a["offsets"]
    return [
        RowSignals(
            json.loads(str(rid)),
            a["token_ids"][off[r] : off[r + 1]],
            a["logprobs"][off[r] : off[r + 1]],
            a["top_ids"][off[r] : off[r + 1]],
            a["top_logprobs"][off[r] : off[r + 1]],
            a["tail"][off[r] : off[r + 1]],
        )
        for r, rid in enumerate(a["row_ids"])
    ]


def signal_key(row_id: Any) -> str:
    """How a row id is stored and looked up (JSON: `1` and `"1"` stay different ids)."""
    return json.dumps(row_id)


def load_signals(folder: Path) -> dict[str, RowSignals]:
    """Every stored row of a labeling run folder (`shard-*.signals.npz`), keyed by `signal_key(id)`.
    A folder without signal shards is an error that says what to turn on."""
    folder = Path(folder)
    paths = sorted(folder.glob("shard-*.signals.npz"))
    if not paths:
        raise FileNotFoundError(
            f"no teacher signal shards (shard-*.signals.npz) in {folder}: label with teacher.store_signals "
            "on (distill.method logit_offline turns it on)"
        )
    return {signal_key(r.row_id): r for path in paths for r in read_signals(path)}
