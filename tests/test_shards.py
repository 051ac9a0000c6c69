"""Sharded, resumable labeling (a real SIGKILL mid-run), atomic shard files, teacher signal round trip."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from potstill.kinds import KindSpec, Labeled, label_rows
from potstill.labeling.shards import (
    ShardError,
    ShardRun,
    atomic_write_text,
    label_sharded,
    rows_digest,
    run_folder,
)
from potstill.labeling.signals import from_tokens, read_signals, tail_mass, write_signals
from potstill.labeling.teacher.base import TokenLogprobs
from potstill.prompts import PromptTemplate

ROOT = Path(__file__).resolve().parents[1]
NLI_PROMPT = "Decide.\nPremise: {premise}\nHypothesis: {hypothesis}\nAnswer:"

# Run in a child process: label 24 NLI rows in shards of 4 on the tiny model, sleeping after each shard
# so the parent can kill it between shards. Each call of the labeler appends its row ids to a log.
CHILD = """
import json, sys, time
from pathlib import Path
from potstill.kinds import KindSpec, label_rows
from potstill.prompts import PromptTemplate
from potstill.labeling.shards import label_sharded
from potstill.labeling.teacher.transformers_backend import TransformersBackend

model_dir, folder, rows_file, delay = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
rows = json.loads(Path(rows_file).read_text())
backend = TransformersBackend.from_spec(model_dir, batch_size=8)
template = PromptTemplate("nli", sys.argv[5])

def label(shard):
    with open(folder.parent / "calls.log", "a") as log:
        log.write(json.dumps([r["id"] for r in shard]) + "\\n")
    return label_rows(backend, shard, template, KindSpec(kind="nli"))

label_sharded(rows, label, folder, shard_rows=4, after_shard=lambda i: time.sleep(delay))
print("finished", flush=True)
"""


def _rows(n: int) -> list[dict]:
    return [
        {"id": f"r{i}", "premise": f"A man number {i} walks a dog.", "hypothesis": "A person is outside."}
        for i in range(n)
    ]


def test_killed_run_resumes_without_redoing_or_losing_a_row(tmp_path, tiny_model_dir):
    rows = _rows(24)
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows))
    folder = tmp_path / "run"
    cmd = [sys.executable, "-c", CHILD, str(tiny_model_dir), str(folder), str(rows_file), "1.5", NLI_PROMPT]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(folder.glob("shard-*.jsonl")):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)  # a real kill: no cleanup, no finally blocks
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    finished = sorted(folder.glob("shard-*.jsonl"))
    assert 1 <= len(finished) < 6, "the kill must land after the first shard and before the last"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished}

    from potstill.labeling.teacher.transformers_backend import TransformersBackend

    backend = TransformersBackend.from_spec(str(tiny_model_dir), batch_size=8)
    template = PromptTemplate("nli", NLI_PROMPT)
    seen: list[str] = []
    progressed: list[int] = []

    def label(shard: list[dict]) -> list[Labeled]:
        seen.extend(r["id"] for r in shard)
        return label_rows(backend, shard, template, KindSpec(kind="nli"))

    result = label_sharded(rows, label, folder, shard_rows=4, progress=progressed.append)
    done_ids = {
        i
        for name in before
        for i in json.loads((folder / "manifest.json").read_text())["shards"][int(name[6:11])]
    }
    assert result.resumed_rows == 4 * len(finished) and progressed[0] == result.resumed_rows
    assert sum(progressed) == 24  # the progress bar counts resumed rows too
    assert not done_ids & set(seen) and len(seen) == len(set(seen)) == 24 - len(done_ids)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished} == before  # not redone
    assert [r["id"] for r in result.records] == [r["id"] for r in rows]  # each row exactly once, in order
    assert all(r["label"] in ("entailment", "neutral", "contradiction") for r in result.records)
    # The killed child labeled each finished shard once (the shard in flight may have been labeled too).
    calls = [json.loads(line) for line in (tmp_path / "calls.log").read_text().splitlines()]
    shards = json.loads((folder / "manifest.json").read_text())["shards"]
    assert all(calls.count(shards[int(name[6:11])]) == 1 for name in before)
    child_ids = [i for c in calls for i in c]
    assert done_ids <= set(child_ids)

    again = label_sharded(rows, label, folder, shard_rows=4)  # everything finished: nothing relabeled
    assert again.labeled_rows == 0 and again.resumed_rows == 24 and again.records == result.records


def _fake_labeler(calls: list[str]):
    def label(shard: list[dict]) -> list[Labeled]:
        calls.extend(r["id"] for r in shard)
        return [Labeled({**r, "label": "x", "confidence": 1.0}) for r in shard]

    return label


def test_half_written_shard_is_ignored_and_the_plan_is_kept(tmp_path):
    rows = _rows(10)
    folder = tmp_path / "run"
    calls: list[str] = []
    run = ShardRun.open(folder, [r["id"] for r in rows], shard_rows=4)
    assert [len(s) for s in run.shards] == [4, 4, 2]
    run.write(0, [{**r, "label": "x"} for r in rows[:4]])
    (folder / ".shard-00001.jsonl.abc.tmp").write_text('{"id": "r4"')  # a kill in the middle of a write
    result = label_sharded(rows, _fake_labeler(calls), folder, shard_rows=3)  # shard_rows change: plan kept
    assert calls == [r["id"] for r in rows[4:]] and result.resumed_rows == 4
    assert [r["id"] for r in result.records] == [r["id"] for r in rows]


def test_merge_refuses_lost_or_duplicated_rows(tmp_path):
    rows = _rows(6)
    run = ShardRun.open(tmp_path, [r["id"] for r in rows], shard_rows=3)
    run.write(0, rows[:3])
    with pytest.raises(ShardError, match="not finished"):
        run.merge([r["id"] for r in rows])
    atomic_write_text(run.shard_path(1), "".join(json.dumps(r) + "\n" for r in [rows[3], rows[3], rows[5]]))
    with pytest.raises(ShardError, match=r"1 row\(s\) missing.*1 labeled twice"):
        run.merge([r["id"] for r in rows])
    with pytest.raises(ShardError, match="unique"):
        ShardRun.open(tmp_path / "other", ["a", "a"])
    with pytest.raises(ShardError, match="other rows"):
        ShardRun.open(tmp_path, ["z"])
    with pytest.raises(ShardError, match="planned rows"):
        run.write(1, rows[:3])


def test_run_folder_is_keyed_by_teacher_prompt_rows_and_settings(tmp_path):
    rows = _rows(3)
    base = run_folder(tmp_path, "t", "p", rows_digest(rows), {"kind": "nli"})
    assert base == run_folder(
        tmp_path, "t", "p", rows_digest([{**r, "label": "gold"} for r in rows]), {"kind": "nli"}
    )
    for other in (
        run_folder(tmp_path, "t2", "p", rows_digest(rows), {"kind": "nli"}),
        run_folder(tmp_path, "t", "p2", rows_digest(rows), {"kind": "nli"}),
        run_folder(tmp_path, "t", "p", rows_digest(rows[:2]), {"kind": "nli"}),
        run_folder(tmp_path, "t", "p", rows_digest(rows), {"kind": "math"}),
    ):
        assert other != base


# ---- teacher signals


def test_tail_mass_formula():
    lp = np.log([[0.5, 0.25, 0.125], [0.7, 0.4, 0.0001]])
    assert tail_mass(lp) == pytest.approx([0.125, 0.0])  # second row sums past 1: clipped at 0
    assert tail_mass([[-np.inf, math.log(0.9)]]) == pytest.approx([0.1])  # pads contribute nothing


def test_signals_round_trip_and_bytes_per_token(tmp_path):
    rng = np.random.default_rng(0)
    k, rows = 64, []
    for r, length in enumerate([5, 0, 12]):
        toks = []
        for _ in range(length):
            ids = rng.choice(49152, size=k, replace=False)
            lps = np.sort(np.log(rng.dirichlet(np.ones(k * 4))[:k]))[::-1]
            toks.append(
                TokenLogprobs(
                    "t", float(lps[0]), int(ids[0]), tuple(zip(ids.tolist(), lps.tolist(), strict=True))
                )
            )
        rows.append(from_tokens({"id": r} if r == 2 else f"row-{r}", toks, k))
    stats = write_signals(tmp_path / "s.npz", rows)
    back = read_signals(tmp_path / "s.npz")
    assert [b.row_id for b in back] == ["row-0", "row-1", {"id": 2}] and [b.n_tokens for b in back] == [
        5,
        0,
        12,
    ]
    for a, b in zip(rows, back, strict=True):
        for f in ("token_ids", "logprobs", "top_ids", "top_logprobs", "tail"):
            assert np.array_equal(getattr(a, f), getattr(b, f))
        assert (
            b.top_ids.dtype == np.int32 and b.top_logprobs.dtype == np.float16 and b.tail.dtype == np.float16
        )
    np.testing.assert_allclose(back[0].tail, tail_mass(back[0].top_logprobs.astype(np.float64)), atol=2e-3)
    assert stats.tokens == 17 and stats.bytes == (tmp_path / "s.npz").stat().st_size
    raw = write_signals(tmp_path / "raw.npz", rows, compress=False)
    print(
        f"signals k=64: {stats.bytes_per_token:.0f} B/token compressed, "
        f"{raw.bytes_per_token:.0f} uncompressed"
    )
    assert 4 + 2 + k * 6 + 2 <= raw.bytes_per_token < 4 + 2 + k * 6 + 2 + 200  # columns + small npz overhead
    assert stats.bytes_per_token < raw.bytes_per_token
    with pytest.raises(ValueError, match="no id"):
        from_tokens("x", [TokenLogprobs("a", -1.0)])


def test_sharded_generation_stores_signals_beside_each_shard(tmp_path, tiny_model_dir):
    from potstill.labeling.teacher.transformers_backend import TransformersBackend

    backend = TransformersBackend.from_spec(str(tiny_model_dir), batch_size=8)
    template = PromptTemplate("s", "Summarize: {text}\nSummary:")
    spec = KindSpec(kind="summarization", max_new_tokens=8, top_logprobs=64)
    rows = [{"id": i, "text": f"the cat sat on mat {i}"} for i in range(6)]
    start = time.perf_counter()
    result = label_sharded(
        rows,
        lambda s: label_rows(backend, s, template, spec),
        tmp_path / "run",
        shard_rows=4,
        signals_top_k=64,
    )
    print(f"summarization tiny: {result.rows_per_s:.1f} rows/s, {result.signal_bytes_per_token:.0f} B/token")
    assert time.perf_counter() - start < 120
    sig = read_signals(tmp_path / "run" / "shard-00000.signals.npz") + read_signals(
        tmp_path / "run" / "shard-00001.signals.npz"
    )
    assert [s.row_id for s in sig] == list(range(6))
    for s, rec in zip(sig, result.records, strict=True):
        assert 0 < s.n_tokens <= 8 and s.top_ids.shape == (s.n_tokens, 64)
        assert (
            np.all(s.top_ids[:, 0] == s.token_ids) or rec["kind"] == "summarization"
        )  # greedy: best = chosen
        assert np.all((s.tail >= 0) & (s.tail <= 1))
        np.testing.assert_allclose(
            float(np.mean(s.logprobs.astype(np.float64))), rec["mean_logprob"], atol=1e-2
        )
    assert result.signal_tokens == sum(s.n_tokens for s in sig) and result.signal_bytes_per_token > 0


def test_label_with_teacher_labels_through_resumable_shards(
    prefect_api, tiny_model_dir, tmp_path, monkeypatch
):
    from prefect import flow

    from potstill.config import TeacherConfig
    from tasks.label import label_with_teacher

    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    cfg = TeacherConfig(model=str(tiny_model_dir), transformers={"batch_size": 16})
    prompt = PromptTemplate("teacher_prompt", (ROOT / "catalog/prompts/student_polarity.txt").read_text())
    rows = [{"id": i, "text": f"a film number {i} , fine .", "label": "positive"} for i in range(70)]

    @flow
    def labeling(refresh: bool) -> dict:
        task = label_with_teacher.with_options(refresh_cache=refresh)
        return task(rows, cfg, prompt, "classification", ["negative", "positive"], "prompts")

    first = labeling(False)
    folder = Path(first["shards_folder"])
    assert folder.is_relative_to(tmp_path / "cache") and first["resumed_rows"] == 0
    assert sorted(p.name for p in folder.glob("shard-*.jsonl")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    assert [r["id"] for r in first["rows"]] == list(range(70)) and first["parse_errors"] == 0
    (folder / "shard-00001.jsonl").unlink()  # as if the run had been killed during the second shard
    second = labeling(True)
    assert second["resumed_rows"] == 64 and second["rows"] == first["rows"]
