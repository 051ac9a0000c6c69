"""Two runs at once on one project: the catalog stays consistent (DVC's lock is waited for, each version
records what its own run wrote) and promotion is serialized by a file lock and a Prefect global concurrency
limit, so a weaker student never replaces a stronger champion."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

import tasks.register as register
from potstill.config import validate
from potstill.data.catalog import Catalog
from potstill.data.tasks import RegistryTarget
from potstill.data.versioning import DvcStore, retry_on_dvc_lock
from tasks.tracking import configure

ROOT = Path(__file__).resolve().parents[1]


def tiny_catalog(root: Path) -> Catalog:
    (root / "catalog").mkdir(parents=True)
    spec = {"datasets": {"items": {"path": "catalog/data/items.jsonl", "role": "state", "versioned": True}}}
    (root / "catalog" / "catalog.yaml").write_text(yaml.safe_dump(spec))
    catalog = Catalog.from_file(root / "catalog" / "catalog.yaml")
    catalog.store.ensure()  # local remote .dvc-storage
    return catalog


def test_a_held_dvc_lock_is_waited_for(tmp_path: Path):
    """Another process holds DVC's repo lock for ~9 s: DVC alone gives up after ~3 s; the store waits."""
    store = DvcStore(tmp_path, ".dvc-storage")
    store.ensure()
    data = tmp_path / "data.txt"
    data.write_text("hello\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, zc.lockfile; lock = zc.lockfile.LockFile(sys.argv[1]);"
            " print('held', flush=True); time.sleep(9); lock.close()",
            str(tmp_path / ".dvc" / "tmp" / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        held = time.monotonic()
        from dvc.lock import LockError

        with pytest.raises(LockError):  # what a run got before: DVC's own ~3 s of retries, then failure
            retry_on_dvc_lock(lambda: store._add(data, push=True), timeout=0)
        md5 = store.add(data)  # several of DVC's 3 s rounds fail before the holder lets go
        waited = time.monotonic() - held
    finally:
        holder.wait(timeout=30)
    assert md5 == "b1946ac92492d2347c6235b4d2611184"  # md5 of "hello\n"
    assert store.cache_path(md5).read_text() == "hello\n"
    assert (tmp_path / ".dvc-storage" / "files" / "md5" / md5[:2] / md5[2:]).exists()  # pushed
    assert waited >= 8.5  # done only after the holder released the lock, and without an error


SAVER = textwrap.dedent(
    """
    import sys
    from potstill.data.catalog import Catalog
    catalog = Catalog.from_file(sys.argv[1])
    who = sys.argv[2]
    for i in range(4):
        catalog.save("items", [{"who": who, "i": i}] * (i + 1), run_id=f"{who}-{i}")
    """
)


def test_two_processes_saving_one_entry_keep_versions_consistent(tmp_path: Path):
    catalog = tiny_catalog(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, str(tmp_path / "catalog" / "catalog.yaml"), who],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=170) == 0, p.stderr.read()[-3000:]

    records = catalog.versions.records("items")
    assert [r.version for r in records] == list(range(1, 9))  # no number given twice, none skipped
    assert sorted(r.run_id for r in records) == sorted(f"{w}-{i}" for w in "ab" for i in range(4))
    for record in records:  # every version holds exactly what the run named in it wrote
        who, i = record.run_id.split("-")
        assert catalog.load("items", version=record.name) == [{"who": who, "i": int(i)}] * (int(i) + 1)
        assert record.rows == int(i) + 1
    # The workspace file, its .dvc file and the last version agree.
    last = records[-1]
    dvc_md5 = yaml.safe_load((tmp_path / "catalog" / "data" / "items.jsonl.dvc").read_text())["outs"][0][
        "md5"
    ]
    assert catalog.current_version("items") == last and dvc_md5 == last.md5
    remote = tmp_path / ".dvc-storage" / "files" / "md5"
    assert all((remote / r.md5[:2] / r.md5[2:]).exists() for r in records)  # every version pushed


def register_candidate(client: MlflowClient, experiment: str, name: str, accuracy: float) -> str:
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "student_accuracy", accuracy)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/student", run.info.run_id)
    return str(version.version)


def registry_limit():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(register.REGISTRY_LIMIT)


def test_promotion_is_serialized_and_the_stronger_student_stays_champion(
    prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Both candidates beat 'no champion'. Each gate holds its decision 1 s before moving the aliases, and
    the weaker one starts once the stronger has read the champion: unserialized, both would read 'no
    champion' and the weaker would write `champion` last. In turn, the weaker is judged against the
    stronger and loses."""
    cfg = validate({})
    client = configure(tmp_path)
    target = RegistryTarget("polarity-student", "student_accuracy", "potstill-polarity")
    name = target.model_name
    client.create_registered_model(name)
    experiment = client.create_experiment("concurrency", artifact_location=tmp_path.as_uri())
    strong = register_candidate(client, experiment, name, 0.9)
    weak = register_candidate(client, experiment, name, 0.6)

    spans: list[tuple[str, float, float]] = []
    real_judge = register.judge
    strong_judged = threading.Event()

    held: list[int] = []

    def slow_judge(client, cfg, metrics, champion, metric):
        start = time.monotonic()
        held.append(registry_limit().active_slots)  # the Prefect limit's slot is taken while judging
        decision = real_judge(client, cfg, metrics, champion, metric)
        if metrics["student_accuracy"] == 0.9:
            strong_judged.set()
        time.sleep(1.0)
        spans.append((str(metrics["student_accuracy"]), start, time.monotonic()))
        return decision

    monkeypatch.setattr(register, "judge", slow_judge)
    results: dict[str, object] = {}

    def gate(version: str, accuracy: float, after: threading.Event | None) -> None:
        if after is not None:
            assert after.wait(timeout=60)
        results[version] = register.gate_in_turn(
            MlflowClient(), cfg, target, version, {"student_accuracy": accuracy}
        )

    threads = [
        threading.Thread(target=gate, args=(strong, 0.9, None)),
        threading.Thread(target=gate, args=(weak, 0.6, strong_judged)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(results) == {strong, weak}

    assert str(client.get_model_version_by_alias(name, "champion").version) == strong
    strong_decision, _ = results[strong]
    weak_decision, weak_plan = results[weak]
    assert strong_decision.promote and not weak_decision.promote
    assert weak_plan == {"challenger": weak}  # judged against the stronger champion: not promoted
    assert any("champion's 0.9000" in r for r in weak_decision.reasons), weak_decision.reasons
    assert client.get_model_version(name, weak).tags["potstill.decision"] == "not promoted"
    (first, _, a1), (second, b0, _) = sorted(spans, key=lambda s: s[1])
    assert (first, second) == ("0.9", "0.6") and b0 >= a1  # the gates did not overlap
    assert held == [1, 1] and registry_limit().limit == 1
    assert registry_limit().active_slots == 0  # released after both

    import fcntl

    from potstill.models import default_cache_dir

    with open(default_cache_dir() / "locks" / register.REGISTRY_LOCK, "a+b") as handle:  # released after
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_taken_registry_limit_is_waited_for_then_a_clear_error(prefect_api):
    """A slot held elsewhere (another machine's run) blocks the next holder; past its wait it fails naming
    the limit rather than hanging. Released, the slot is free again at once."""
    limit = "potstill-test-registry"
    with register.prefect_limit_slot(limit) as lease:
        assert lease is not None
        start = time.monotonic()
        with (
            pytest.raises(TimeoutError, match=f"'{limit}' stayed taken for 2 s"),
            register.prefect_limit_slot(limit, wait_s=2.0),
        ):
            pytest.fail("entered a taken slot")
        assert time.monotonic() - start >= 2.0
    with register.prefect_limit_slot(limit, wait_s=2.0) as again:
        assert again not in (None, lease)


def test_without_a_prefect_server_only_the_file_lock_serializes():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        register.prefect_limit_slot("potstill-test-registry") as lease,
    ):
        assert lease is None
