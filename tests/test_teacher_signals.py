"""Teacher signals for closed kinds, rationales, and `logit_offline` training from the stored signals.

Every number is checked against a plain reference: the stored top-k against a direct, unbatched forward
of the teacher over prompt + label + EOS; the training loss against forward KL over k+1 buckets and
cross-entropy written straight from their definitions in float64.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from potstill.config import DistillConfig, StudentConfig, TeacherConfig
from potstill.kinds import KindSpec, RationaleSpec, label_rows
from potstill.labeling.shards import ShardRun, label_sharded
from potstill.labeling.signals import load_signals, read_signals, signal_key, tail_mass
from potstill.labeling.teacher.transformers_backend import TransformersBackend
from potstill.prompts import PromptTemplate, label_completion
from tests.conftest import CACHE, build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
NLI = PromptTemplate("nli", "Decide.\nPremise: {premise}\nHypothesis: {hypothesis}\nAnswer:")
STUDENT = PromptTemplate("student", "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:")
RATIONALE = PromptTemplate(
    "why", "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer: {label}\nExplanation:"
)
K = 16


def _rows(n: int) -> list[dict]:
    subjects = ["A man", "Two dogs", "A child", "The women", "A cook", "Some birds", "An old car", "A boy"]
    return [
        {
            "id": f"r{i}",
            "premise": f"{subjects[i % 8]} number {i} is near the red house.",
            "hypothesis": f"{subjects[(i * 3) % 8]} is {'inside' if i % 2 else 'outside'}.",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def teacher_dir(tokenizer) -> Path:
    """A second tiny model (2 layers, other seed): a teacher that differs from the student."""
    return build_tiny_llama(CACHE / "test-models" / "tiny-llama-2x64-teacher-v1", tokenizer, layers=2, seed=1)


@pytest.fixture(scope="module")
def backend(teacher_dir: Path) -> TransformersBackend:
    return TransformersBackend.from_spec(str(teacher_dir), batch_size=4)


def _direct_logprobs(model, tok, prompt: str, completion: list[int]) -> torch.Tensor:
    """log p(. | prompt + completion[:j]) for every completion position j, one unbatched forward, float64."""
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    start = len(prompt_ids) - 1
    return torch.log_softmax(logits[start : start + len(completion)], dim=-1)


def test_closed_kind_signals_match_a_direct_teacher_forward(backend, tmp_path):
    rows = _rows(10)
    spec = KindSpec(kind="nli", top_logprobs=K)
    result = label_sharded(
        rows, lambda s: label_rows(backend, s, NLI, spec), tmp_path / "run", shard_rows=4, signals_top_k=K
    )
    plain = label_rows(backend, rows, NLI, KindSpec(kind="nli"))
    tok, eos = backend.tokenizer, backend.tokenizer.eos_token_id
    signals = load_signals(tmp_path / "run")
    assert list(signals) == [signal_key(r["id"]) for r in rows]  # each row once, in order
    for rec, ref in zip(result.records, plain, strict=True):
        # asking for signals changes nothing about the label, its confidence or its distribution
        assert rec["label"] == ref.record["label"]
        assert rec["distribution"] == pytest.approx(ref.record["distribution"], abs=1e-6)
        completion = tok(label_completion(rec["label"]), add_special_tokens=False)["input_ids"] + [eos]
        sig = signals[signal_key(rec["id"])]
        assert sig.token_ids.tolist() == completion  # " <label>" then EOS, teacher-forced
        direct = _direct_logprobs(backend.model, tok, NLI.render(rec), completion)
        for j in range(len(completion)):
            want_lp, want_ids = direct[j].topk(K)
            assert sig.top_ids[j, 0] == want_ids[0]
            got = torch.from_numpy(sig.top_logprobs[j].astype(np.float64))
            # each stored id's log-prob is the teacher's (fp16), and they are the top k
            np.testing.assert_allclose(
                got, direct[j][torch.from_numpy(sig.top_ids[j].astype(np.int64))], rtol=1e-3, atol=1e-4
            )
            assert float(got.min()) >= float(want_lp[-1]) - 1e-2
            assert float(sig.logprobs[j]) == pytest.approx(float(direct[j][completion[j]]), rel=1e-3)
            tail = 1.0 - float(want_lp.exp().sum())
            assert float(sig.tail[j]) == pytest.approx(tail, abs=1e-3)
        np.testing.assert_allclose(sig.tail, tail_mass(sig.top_logprobs), atol=1e-3)
    # every option's forced tokens, not only the chosen one's: " entailment" is two tokens, the others one
    prompts = [NLI.render(r) for r in rows[:3]]
    options = [[label_completion(o) for o in ("entailment", "neutral", "contradiction")]] * 3
    scores, forced = backend.score_with_signals(prompts, options, K)
    np.testing.assert_allclose(scores, backend.score(prompts, options), atol=1e-6)
    for prompt, per_option, option_scores in zip(prompts, forced, scores, strict=True):
        for text, toks, score in zip(options[0], per_option, option_scores, strict=True):
            completion = tok(text, add_special_tokens=False)["input_ids"] + [eos]
            direct = _direct_logprobs(backend.model, tok, prompt, completion)
            assert [t.token_id for t in toks] == completion
            assert [t.logprob for t in toks] == pytest.approx(
                [float(direct[j, c]) for j, c in enumerate(completion)], abs=1e-4
            )
            assert score == pytest.approx(sum(t.logprob for t in toks[:-1]), abs=1e-9)  # EOS is not scored
            for j, t in enumerate(toks):
                assert [i for i, _ in t.top] == direct[j].topk(K).indices.tolist()
    print(
        f"closed-kind signals top-{K}: {result.signal_bytes_per_token:.0f} B/token over "
        f"{result.signal_tokens} tokens ({result.signal_tokens / len(rows):.1f} per row)"
    )
    assert result.signal_tokens == sum(s.n_tokens for s in signals.values())


def test_single_token_labels_keep_their_scores_with_signals(backend):
    rows = [{"id": i, "premise": f"a film number {i}", "hypothesis": "x"} for i in range(5)]
    spec = KindSpec(kind="classification", labels=("negative", "positive"))
    plain = label_rows(backend, rows, NLI, spec)
    forced = label_rows(
        backend, rows, NLI, KindSpec(kind="classification", labels=spec.labels, top_logprobs=4)
    )
    for a, b in zip(plain, forced, strict=True):
        assert a.record["distribution"] == pytest.approx(b.record["distribution"], abs=1e-6)
        assert not a.tokens and len(b.tokens) == 2 and b.tokens[-1].token_id == backend.tokenizer.eos_token_id


def test_killed_shard_resumes_without_duplicating_signals(backend, tmp_path, monkeypatch):
    rows = _rows(12)
    spec = KindSpec(kind="nli", top_logprobs=K)
    folder = tmp_path / "run"
    calls: list[str] = []

    def label(shard: list[dict]):
        calls.extend(r["id"] for r in shard)
        return label_rows(backend, shard, NLI, spec)

    real_write = ShardRun.write

    def dies_on_second(self, index, records):  # killed after shard 1's signals, before its labels
        if index == 1:
            raise KeyboardInterrupt("killed")
        return real_write(self, index, records)

    monkeypatch.setattr(ShardRun, "write", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        label_sharded(rows, label, folder, shard_rows=4, signals_top_k=K)
    assert (folder / "shard-00001.signals.npz").exists() and not (folder / "shard-00001.jsonl").exists()
    first_shard = (folder / "shard-00000.signals.npz").read_bytes()
    monkeypatch.setattr(ShardRun, "write", real_write)
    calls.clear()
    result = label_sharded(rows, label, folder, shard_rows=4, signals_top_k=K)
    assert calls == [r["id"] for r in rows[4:]]  # shard 0 is not relabeled, shard 1 is, once
    assert (folder / "shard-00000.signals.npz").read_bytes() == first_shard
    ids = [s.row_id for p in sorted(folder.glob("shard-*.signals.npz")) for s in read_signals(p)]
    assert ids == [r["id"] for r in rows]  # every row's signal exactly once
    assert result.resumed_rows == 4 and [r["id"] for r in result.records] == ids


def test_rationales_are_generated_stored_and_resumed(backend, tmp_path):
    rows = _rows(6)
    rows[0]["explanation"] = "  A house   is mentioned. "
    rationale = RationaleSpec(RATIONALE, max_new_tokens=6, field="explanation")
    items = label_rows(backend, rows, NLI, KindSpec(kind="nli"), rationale)
    recs = [it.record for it in items]
    assert recs[0]["rationale"] == "A house is mentioned." and recs[0]["rationale_source"] == "data"
    tok = backend.tokenizer
    for rec in recs[1:]:
        # the first line of a greedy generation after the rationale prompt, rendered with the teacher's label
        ids = tok(RATIONALE.render(rec), return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = backend.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        want = " ".join(
            tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n", 1)[0].split()
        )
        assert rec["rationale"] == (want or None) and isinstance(rec["rationale"], str)
        assert rec["rationale_source"] == "teacher"
    # a human explanation of another (gold) label is not used for the teacher's label
    disagree = {**rows[0], "gold_label": "none-of-these"}
    (item,) = label_rows(backend, [disagree], NLI, KindSpec(kind="nli"), rationale)
    assert item.record["rationale_source"] == "teacher"


def test_label_with_teacher_stores_signals_and_rationales(prefect_api, teacher_dir, tmp_path, monkeypatch):
    from prefect import flow

    from tasks.label import label_with_teacher

    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    cfg = TeacherConfig(
        model=str(teacher_dir),
        transformers={"batch_size": 8},
        shard_rows=4,
        top_logprobs=K,
        rationale=True,
        rationale_max_new_tokens=4,
    ).for_method("logit_offline")
    assert cfg.store_signals and TeacherConfig().for_method("step_by_step").rationale
    rows = [{**r, "label": "neutral"} for r in _rows(6)]  # gold never reaches the teacher

    @flow
    def labeling() -> tuple[dict, dict]:
        labels = ["entailment", "neutral", "contradiction"]
        train = label_with_teacher(rows, cfg, NLI, "nli", labels, "prompts", RATIONALE)
        gold = label_with_teacher(rows, cfg, NLI, "nli", labels, "gold")
        return train, gold

    train, gold = labeling()
    assert all(isinstance(r["rationale"], str) for r in train["rows"])
    assert all("rationale" not in r for r in gold["rows"])  # no rationale prompt: none generated
    signals = load_signals(Path(train["signals_dir"]))
    assert sorted(signals) == sorted(signal_key(r["id"]) for r in rows)
    assert train["signal_bytes_per_token"] > 0 and train["shards_folder"] != gold["shards_folder"]


# ---- logit_offline


def _inputs(student_dir: Path, rows: list[dict], signals_dir: Path | None, out: Path, **distill):
    from transformers import AutoTokenizer

    from potstill.models import prepare_tokenizer
    from potstill.training.methods.inputs import DistillInputs

    model = LlamaForCausalLM.from_pretrained(student_dir, dtype=torch.float32)
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(student_dir))
    student = StudentConfig(
        model=str(student_dir),
        max_steps=4,
        batch_size=4,
        learning_rate=5e-3,
        logging_steps=1,
        warmup_ratio=0.0,
        max_length=64,
    )
    return DistillInputs(
        model=model,
        tokenizer=tok,
        rows=rows,
        prompt=STUDENT,
        student=student,
        distill=DistillConfig.model_validate({"method": "logit_offline", "logit_offline": distill}),
        output_dir=out,
        signals_dir=signals_dir,
    )


@pytest.fixture(scope="module")
def labeled(backend, tmp_path_factory) -> tuple[list[dict], Path]:
    folder = tmp_path_factory.mktemp("signals") / "run"
    spec = KindSpec(kind="nli", top_logprobs=K)
    result = label_sharded(_rows(8), lambda s: label_rows(backend, s, NLI, spec), folder, 4, signals_top_k=K)
    rows = [dict(r) for r in result.records]
    teacher = rows[1]["label"]
    rows[1]["label"] = (
        "contradiction" if teacher != "contradiction" else "entailment"
    )  # a reviewer's correction
    return rows, folder


def _naive_loss(model, tok, rows, signals, kd_weight: float, ce_weight: float) -> float:
    """Forward KL over the k stored ids + "everything else", one-hot where the row's tokens leave the
    teacher's, and cross-entropy on the completion tokens; means over all completion positions."""
    kls, ces = [], []
    for r in rows:
        prompt = STUDENT.render(r)
        completion = tok(label_completion(r["label"]), add_special_tokens=False)["input_ids"] + [
            tok.eos_token_id
        ]
        logq = _direct_logprobs(model, tok, prompt, completion)
        sig = signals[signal_key(r["id"])]
        same = True
        for j, target in enumerate(completion):
            same = same and j < sig.n_tokens and int(sig.token_ids[j]) == target
            ces.append(-float(logq[j, target]))
            if not same:
                kls.append(-float(logq[j, target]))  # KL(one-hot ‖ q) = −log q(target)
                continue
            ids = torch.from_numpy(sig.top_ids[j].astype(np.int64))
            p = np.concatenate([np.exp(sig.top_logprobs[j].astype(np.float64)), [float(sig.tail[j])]])
            p = p / p.sum()
            q_top = logq[j, ids].exp().numpy()
            q = np.concatenate([q_top, [1.0 - q_top.sum()]])
            kls.append(float(np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0))))
    return kd_weight * float(np.mean(kls)) + ce_weight * float(np.mean(ces))


def test_logit_offline_loss_equals_a_naive_reference(tiny_model_dir, labeled, tmp_path):
    from potstill.training.methods.logit_offline import SignalCollator, build_targets, offline_loss

    rows, folder = labeled
    inputs = _inputs(tiny_model_dir, rows, folder, tmp_path, kd_weight=1.0, ce_weight=0.5, chunk_size=3)
    signals = load_signals(folder)
    targets = build_targets(rows, inputs, signals)
    assert targets[1].teacher_positions == 0 and targets[0].teacher_positions == targets[0].completion_len
    batch = SignalCollator(targets, inputs.tokenizer.pad_token_id)([{"row": i} for i in range(len(rows))])
    with torch.no_grad():
        parts = offline_loss(inputs.model, batch, inputs)
    want = _naive_loss(inputs.model, inputs.tokenizer, rows, signals, 1.0, 0.5)
    assert float(parts.loss) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_logit_offline_trains_without_loading_the_teacher(tiny_model_dir, labeled, tmp_path, monkeypatch):
    import potstill.models
    from potstill.training.methods import train
    from potstill.training.methods.logit_offline import SignalCollator, build_targets, offline_loss

    def no_teacher(*a, **kw):
        raise AssertionError("logit_offline must not load a model")

    monkeypatch.setattr(potstill.models, "load_model", no_teacher)
    rows, folder = labeled
    inputs = _inputs(tiny_model_dir, rows, folder, tmp_path / "out", ce_weight=0.0)
    targets = build_targets(rows, inputs, load_signals(folder))
    batch = SignalCollator(targets, inputs.tokenizer.pad_token_id)([{"row": i} for i in range(len(rows))])
    with torch.no_grad():
        before = float(offline_loss(inputs.model, batch, inputs).loss)
    result = train(inputs)  # the dispatcher picks potstill.training.methods.logit_offline
    with torch.no_grad():
        after = float(offline_loss(inputs.model, batch, inputs).loss)
    assert result.steps == 4 and math.isfinite(result.final_loss) and result.tokens_per_s > 0
    assert all("kd_loss" in h and h["tokens_per_s"] > 0 for h in result.history)
    assert after < before, (before, after)
    print(f"logit_offline tiny: {result.tokens_per_s:.0f} tokens/s, loss {before:.3f} -> {after:.3f}")


def test_logit_offline_names_rows_without_signals(tiny_model_dir, labeled, tmp_path):
    from potstill.training.methods.logit_offline import MissingSignalsError, train

    rows, folder = labeled
    extra = [{**rows[0], "id": f"new-{i}"} for i in range(7)]
    with pytest.raises(MissingSignalsError, match=r"7 of 15 training rows .*'new-0', 'new-1'"):
        train(_inputs(tiny_model_dir, rows + extra, folder, tmp_path))
    with pytest.raises(ValueError, match="needs signals_dir"):
        train(_inputs(tiny_model_dir, rows, None, tmp_path))
    with pytest.raises(FileNotFoundError, match="store_signals"):
        train(_inputs(tiny_model_dir, rows, tmp_path, tmp_path))


def test_rows_without_signals_train_on_their_label_when_allowed(tiny_model_dir, labeled, tmp_path):
    """distill.missing_signals: label (what a retrain uses for rows carried over from the champion's
    train_set): those rows are one-hot on their label at every position, the others keep their signal."""
    from potstill.training.methods.logit_offline import build_targets, train

    rows, folder = labeled
    extra = [{**rows[0], "id": f"new-{i}"} for i in range(3)]
    inputs = _inputs(tiny_model_dir, rows + extra, folder, tmp_path, missing_signals="label")
    targets = build_targets(inputs.rows, inputs, load_signals(folder))
    carried, taught = targets[len(rows) :], targets[: len(rows)]
    assert all(t.teacher_positions == 0 for t in carried)
    assert any(t.teacher_positions > 0 for t in taught)
    for t in carried:  # one-hot: the completion's own token with log-probability 0, nothing else
        completion = torch.tensor(t.ids[len(t.ids) - t.completion_len :])
        assert torch.equal(t.top_ids[:, 0], completion) and (t.top_ids[:, 1:] == -1).all()
        assert (t.top_logprobs[:, 0] == 0).all() and (t.tail == 0).all()
    result = train(inputs)
    assert result.steps == 4 and math.isfinite(result.final_loss)


def test_vllm_prompt_logprobs_become_forced_tokens():
    from types import SimpleNamespace

    from potstill.labeling.teacher.vllm_backend import forced_tokens_from_vllm

    lp = SimpleNamespace
    out = SimpleNamespace(
        prompt_token_ids=[5, 7, 9, 2],
        prompt_logprobs=[
            None,
            {7: lp(logprob=-0.5)},
            {9: lp(logprob=-2.0), 3: lp(logprob=-0.1)},
            {2: lp(logprob=-0.3), 4: lp(logprob=-1.5), 6: lp(logprob=-3.0)},
        ],
    )
    toks = forced_tokens_from_vllm(out, 2, k=2)
    assert [t.token_id for t in toks] == [9, 2] and [t.logprob for t in toks] == [-2.0, -0.3]
    assert toks[0].top == ((3, -0.1), (9, -2.0)) and toks[1].top == ((2, -0.3), (4, -1.5))
    assert json.dumps([t.top for t in toks])  # plain numbers: storable as signals


def test_catalog_rationale_prompts_render_for_their_kinds(project):
    from potstill.data.catalog import Catalog

    cat = Catalog.from_file(project / "catalog" / "catalog.yaml")
    nli_row = {"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": "entailment"}
    for name in ("teacher_nli_rationale_prompt", "teacher_nli_tuned_rationale_prompt"):
        assert cat.prompt(name).render(nli_row).endswith("Answer: entailment\nExplanation:")
    polarity = cat.for_task("polarity").prompt("rationale_prompt")  # the demo task's rationale template
    assert polarity.render({"text": "a fine film .", "label": "positive"}).endswith(
        "Sentiment: positive\nExplanation:"
    )
