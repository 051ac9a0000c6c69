"""Versioned catalog entries against a real temporary git + DVC repo with a local remote."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from potstill.cli import main
from potstill.config import CatalogConfig
from potstill.data.catalog import Catalog
from potstill.data.rowdiff import diff_rows
from potstill.data.versioning import VersionError

_ROOT = Path(__file__).resolve().parents[1]
V1 = [{"id": "a", "text": "good", "label": "positive"}, {"id": "b", "text": "bad", "label": "negative"}]
V2 = [{"id": "a", "text": "good", "label": "negative"}, {"id": "c", "text": "new", "label": "positive"}]


@pytest.fixture
def git_project(project, monkeypatch):
    for key, value in {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }.items():
        monkeypatch.setenv(key, value)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=project, check=True)
    return project


def clear_cache(root):
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)


def test_versions_are_added_pushed_and_read_back_from_the_remote(git_project):
    """An entry no step writes (incoming batches) is `dvc add`-ed: a .dvc file beside it."""
    cat = Catalog.from_file(git_project / "catalog/catalog.yaml", CatalogConfig()).for_task("polarity")
    s1 = cat.save("incoming", V1, run_id="run-1")
    assert (s1.version, s1.rows) == ("v1", 2)
    assert (git_project / "catalog/data/polarity/incoming/batch.jsonl.dvc").exists()
    assert cat.save("incoming", V1).version == "v1"  # same content: no new version
    s2 = cat.save("incoming", V2, run_id="run-2")
    assert s2.version == "v2" and s2.md5 != s1.md5
    assert (git_project / "catalog/versions/polarity/incoming.jsonl").exists()
    assert [(r.name, r.run_id, r.rows) for r in cat.versions.records("incoming")] == [
        ("v1", "run-1", 2),
        ("v2", "run-2", 2),
    ]
    assert any((git_project / ".dvc-storage").rglob("*")), "pushed to the local remote"
    clear_cache(git_project)
    assert cat.load("incoming", version="v1") == V1  # fetched from the remote by content hash
    assert cat.load("incoming") == V2
    with pytest.raises(VersionError, match=r"polarity/incoming@v9 does not exist; versions: \['v1', 'v2'\]"):
        cat.load("incoming", version="v9")


def test_checkout_restores_without_a_new_version_and_diff_counts_changes(git_project):
    cat = Catalog.from_file(git_project / "catalog/catalog.yaml").for_task("polarity")
    cat.save("train_set", V1)
    cat.save("train_set", V2)
    clear_cache(git_project)
    record = cat.checkout("train_set", "v1")
    assert record.name == "v1" and cat.load("train_set") == V1
    assert cat.current_version("train_set").name == "v1"
    assert len(cat.versions.records("train_set")) == 2
    d = diff_rows(cat.load("train_set", "v1"), cat.load("train_set", "v2"))
    assert d.added == ["c"] and d.removed == ["b"] and d.relabeled == [("a", "positive", "negative")]


def test_commit_mode_tags_each_version_and_reads_through_dvc_api(git_project):
    cat = Catalog.from_file(git_project / "catalog/catalog.yaml", CatalogConfig(commit=True))
    cat = cat.for_task("polarity")
    cat.save("reviewed_labels", V1)
    cat.save("reviewed_labels", V2)
    tags = subprocess.run(["git", "tag"], cwd=git_project, capture_output=True, text=True).stdout.split()
    assert tags == ["polarity/reviewed_labels@v1", "polarity/reviewed_labels@v2"]
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=git_project, capture_output=True, text=True
    ).stdout
    assert "catalog: polarity/reviewed_labels v2" in log
    clear_cache(git_project)
    (git_project / "catalog/data/polarity/review/reviewed_labels.jsonl").unlink()
    assert cat.load("reviewed_labels", version="v1") == V1  # dvc.api.read at the tag, from the remote


def test_prompt_templates_are_versioned_by_content(project):
    cat = Catalog.from_file(project / "catalog/catalog.yaml").for_task("polarity")
    first = cat.prompt_version("student_prompt", run_id="r1")
    assert first.name == "v1" and cat.prompt_version("student_prompt").name == "v1"
    path = project / "catalog/prompts/student_polarity.txt"
    old = path.read_text()
    path.write_text("Text: {text}\nLabel:")
    assert cat.prompt_version("student_prompt").name == "v2"
    assert cat.prompt_at("student_prompt", "v1").text == old
    assert (project / "catalog/versions/polarity/prompt.student_prompt.jsonl").exists()


def test_works_without_git_too(project):
    cat = Catalog.from_file(project / "catalog/catalog.yaml").for_task("polarity")
    assert cat.save("teacher_labels", V1).version == "v1"
    clear_cache(project)
    (project / "catalog/data/polarity/pipeline/teacher_labels.jsonl").unlink()
    assert cat.load("teacher_labels", "v1") == V1


def test_catalog_cli(git_project, capsys):
    cat = Catalog.from_file(git_project / "catalog/catalog.yaml").for_task("polarity")
    cat.save("train_set", V1, run_id="run-1")
    cat.save("train_set", V2, run_id="run-2")
    args = ["--project", str(git_project), "catalog"]
    assert main([*args, "list"]) == 0
    out = capsys.readouterr().out
    assert "polarity/train_set" in out and "v2" in out and "training_set" in out
    assert "polarity/prompt.teacher_prompt" in out
    assert main([*args, "log", "train_set"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("v1 ") and "run run-1" in out[0] and "run run-2" in out[1]
    assert main([*args, "show", "train_set@v1"]) == 0
    out = capsys.readouterr().out
    assert "polarity/train_set@v1: 2 rows" in out and "label: str" in out and '"id": "b"' in out
    assert main([*args, "diff", "train_set@v1", "train_set@v2"]) == 0
    out = capsys.readouterr().out
    assert "1 added, 1 removed, 1 relabeled" in out and "~ a: positive -> negative" in out
    assert main([*args, "checkout", "--task", "polarity", "train_set@v1"]) == 0
    assert "restored polarity/train_set@v1" in capsys.readouterr().out
    assert cat.load("train_set") == V1
    assert main([*args, "checkout", "train_set"]) == 2
    assert "needs ENTRY@vN" in capsys.readouterr().err


def test_init_makes_a_dvc_repo_with_the_local_remote(project, capsys):
    assert main(["--project", str(project), "init"]) == 0
    out = capsys.readouterr().out
    assert (project / ".dvc" / "config").exists()
    assert "default remote: storage ->" in out and ".dvc-storage" in out
    assert main(["--project", str(project), "init"]) == 0  # idempotent


def test_stage_outputs_are_versioned_by_content_and_restored_from_the_remote(git_project):
    """With the repository's dvc.yaml, entries are stage outputs: no `.dvc` file (DVC refuses `dvc add`
    of a stage out), yet every version is pushed by content and comes back from the remote."""
    shutil.copy(_ROOT / "dvc.yaml", git_project / "dvc.yaml")
    shutil.copy(_ROOT / ".gitignore", git_project / ".gitignore")  # DVC refuses .dvc files in ignored paths
    cat = Catalog.from_file(git_project / "catalog/catalog.yaml", CatalogConfig(commit=True))
    cat = cat.for_task("polarity")
    assert cat.save("train_set", V1).version == "v1"
    assert cat.save("train_set", V2).version == "v2"
    assert not (git_project / "catalog/data/polarity/pipeline/train_set.jsonl.dvc").exists()
    clear_cache(git_project)
    assert cat.load("train_set", "v1") == V1  # by md5 from the remote, not at the git tag
    clear_cache(git_project)
    assert cat.checkout("train_set", "v1").name == "v1" and cat.load("train_set") == V1
    assert cat.current_version("train_set").name == "v1"


# ---- crash safety: torn log lines, a kill between record and replace, a remote that is down, locks


def test_a_torn_last_line_is_reported_and_skipped_and_the_log_stays_usable(project, caplog):
    cat = Catalog.from_file(project / "catalog/catalog.yaml").for_task("polarity")
    cat.save("train_set", V1, run_id="run-1")
    log_file = cat.versions.path("train_set")
    with log_file.open("a") as f:  # a crash mid-append: half a record, no newline
        f.write('{"version": 2, "md5": "0f3')
    with caplog.at_level("WARNING"):
        assert [r.name for r in cat.versions.records("train_set")] == ["v1"]
    assert f"{log_file} line 2 is not a version record" in caplog.text
    s2 = cat.save("train_set", V2, run_id="run-2")
    assert s2.version == "v2"
    lines = log_file.read_text().splitlines()
    assert len(lines) == 3 and lines[1] == '{"version": 2, "md5": "0f3'  # kept for inspection, own line
    assert [(r.name, r.run_id) for r in cat.versions.records("train_set")] == [
        ("v1", "run-1"),
        ("v2", "run-2"),
    ]
    assert cat.load("train_set", "v1") == V1 and cat.load("train_set", "v2") == V2


def test_a_run_killed_after_recording_leaves_a_true_record_and_the_next_run_does_not_claim_it(
    git_project, monkeypatch
):
    """The version record is written (and fsynced) after the content is in DVC and before the workspace
    file is replaced: a kill between the two leaves the old file and a record whose content and run are
    right, and a later run saving the same rows gets that version, not a new one under its own id."""
    cat = Catalog.from_file(git_project / "catalog/catalog.yaml", CatalogConfig(commit=True)).for_task(
        "polarity"
    )
    cat.save("incoming", V1, run_id="run-1")
    path = cat.file("incoming")
    before = path.read_bytes()
    real_append = cat.versions._log.append

    def append_then_die(name, **fields):
        real_append(name, **fields)
        raise SystemExit("killed")  # BaseException, like the end of the process

    monkeypatch.setattr(cat.versions._log, "append", append_then_die)
    with pytest.raises(SystemExit):
        cat.save("incoming", V2, run_id="run-2")
    monkeypatch.undo()
    (path.parent / f".{path.name}.orphan.tmp").write_text("a temp file of a killed writer")
    assert path.read_bytes() == before  # the workspace still holds v1, whole
    v2 = cat.versions.get("incoming", "v2")
    assert v2.run_id == "run-2" and cat.current_version("incoming").name == "v1"
    assert cat.load("incoming", "v2") == V2  # no git tag yet: read by hash from the DVC cache

    again = Catalog.from_file(git_project / "catalog/catalog.yaml", CatalogConfig(commit=True)).for_task(
        "polarity"
    )
    saved = again.save("incoming", V2, run_id="run-3")
    assert saved.version == "v2" and again.versions.get("incoming", "v2").run_id == "run-2"
    assert [r.name for r in again.versions.records("incoming")] == ["v1", "v2"]
    assert again.current_version("incoming").name == "v2"
    tags = subprocess.run(["git", "tag"], cwd=git_project, capture_output=True, text=True).stdout.split()
    assert "polarity/incoming@v2" in tags  # the commit the killed run never made is made now
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temp file left behind


def test_a_failed_dvc_push_records_the_version_and_the_next_run_pushes_it(project, monkeypatch, caplog):
    blocker = project / "not-a-folder"
    blocker.write_text("a file where the remote's parent folder should be")
    monkeypatch.setenv("POTSTILL_DVC_REMOTE_URL", str(blocker / "remote"))
    cat = Catalog.from_file(project / "catalog/catalog.yaml").for_task("polarity")
    with caplog.at_level("WARNING"):
        saved = cat.save("train_set", V1, run_id="run-1")
    assert saved.version == "v1" and cat.load("train_set", "v1") == V1
    assert f"dvc push of {saved.md5} failed" in caplog.text and "the next run retries" in caplog.text
    assert (project / ".cache/catalog/unpushed.txt").read_text().split() == [saved.md5]

    blocker.unlink()  # the remote is back
    caplog.clear()
    later = Catalog.from_file(project / "catalog/catalog.yaml").for_task("polarity")
    with caplog.at_level("INFO"):
        later.save("train_set", V2, run_id="run-2")
    assert "pushed 1 catalog object(s) that an earlier run could not push" in caplog.text
    assert (project / ".cache/catalog/unpushed.txt").read_text().split() == []
    clear_cache(project)
    assert later.load("train_set", "v1") == V1 and later.load("train_set", "v2") == V2  # both on the remote


def test_a_lock_held_too_long_fails_with_the_name_of_its_holder(tmp_path):
    from potstill.files import LockTimeout, file_lock

    lock = tmp_path / "catalog.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from potstill.files import file_lock\n"
            f"with file_lock(Path({str(lock)!r})):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=_ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(LockTimeout, match=rf"held by pid {holder.pid} on .* since "),
            file_lock(lock, timeout=0.3),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with file_lock(lock, timeout=5):  # the kernel freed it with its holder
        assert lock.read_text().startswith(f"pid {os.getpid()} ")
