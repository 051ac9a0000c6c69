"""Multi-process training under `accelerate launch` (potstill/training/launch.py) against one process.

Two ranks on CPU (DDP over gloo) at the same global batch must reproduce the loss curve and the final
weights of the in-process single-process run to 1e-4, with the real tiny Llama and the real trainer.

Why a private network namespace: torchrun's rendezvous store (c10d TCPStore) listens on all addresses
whatever `--master_addr` says, unless potstill's agent (potstill/training/agent.py) binds it to loopback;
the namespace keeps these tests safe whatever that code does, and one test checks the real, unwrapped path
listens on 127.0.0.1 only.
`unshare -n` gives the ranks a network namespace of their own with only `lo` (brought up with an
ioctl from Python, because `ip` comes from iproute2, which a minimal Debian lacks; `unshare` is in
util-linux, which Debian marks Essential). Without permission for namespaces the test runs unwrapped
only when this host has no interface besides `lo` (checked with `socket.if_nameindex`, no sysctl), and
otherwise skips, saying why.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from potstill.config import RunConfig, load_config
from potstill.models import load_model
from potstill.prompts import PromptTemplate
from potstill.training.classifier import Classifier
from potstill.training.launch import LaunchError, launch_training, per_device_batch
from potstill.training.methods import DistillInputs, TrainResult, train
from tests.conftest import CACHE, ROOT, build_tiny_llama

PROMPT = PromptTemplate("sentiment", "Say if the review is positive or negative.\nReview: {text}\nAnswer:")
LABELS = ["positive", "negative"]  # one token each: every row has 2 loss tokens (label + EOS)
WORDS = ["the", "film", "was", "long", "slow", "bright", "warm", "dull"]
WORDS += ["odd", "kind", "plot", "cast", "score", "music", "scenes", "ending"]

# bring `lo` up inside the new namespace: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP
LO_UP = (
    "import fcntl,socket,struct;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
    "f=struct.unpack('16sH',fcntl.ioctl(s,0x8913,struct.pack('16sH22x',b'lo',0))[:18])[1];"
    "fcntl.ioctl(s,0x8914,struct.pack('16sH22x',b'lo',f|1))"
)

LOOPBACK_WORKS = (
    "import socket; s = socket.create_server(('127.0.0.1', 0)); socket.create_connection(s.getsockname())"
)


def private_network() -> list[str] | None:
    """A command prefix that runs its argument in a fresh network namespace with `lo` up, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for flags in (["-n"], ["-r", "-n"]):  # root (CAP_SYS_ADMIN), else an unprivileged user namespace
        script = '"$1" -c "$2" && shift 2 && exec "$@"'
        prefix = [unshare, *flags, "sh", "-c", script, "sh", sys.executable, LO_UP]
        probe = [*prefix, sys.executable, "-c", LOOPBACK_WORKS]
        if subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
            return prefix
    return None


@pytest.fixture(scope="module")
def netns() -> list[str]:
    prefix = private_network()
    if prefix is not None:
        return prefix
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        pytest.skip(
            "unshare -n is not permitted here, and torchrun's rendezvous store would listen on every "
            f"interface ({', '.join(others)}), not only 127.0.0.1"
        )
    return []


def make_rows(n: int = 40) -> list[dict[str, Any]]:
    """Reviews of 3 to 17 words (uneven lengths, so length grouping matters), seeded labels."""
    g = torch.Generator().manual_seed(7)
    rows = []
    for i in range(n):
        words = torch.randint(len(WORDS), (3 + i % 15,), generator=g).tolist()
        rows.append({"id": f"r{i}", "text": " ".join(WORDS[w] for w in words), "label": LABELS[i % 3 % 2]})
    return rows


def run_config(method: str = "sft", teacher: Path | None = None, **student: Any) -> RunConfig:
    base = {
        "batch_size": 4,
        "max_steps": 8,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "max_length": 48,
    }
    overrides = [f"student.{k}={json.dumps(v)}" for k, v in {**base, **student}.items()]
    overrides.append(f"distill.method={method}")
    if teacher is not None:
        overrides.append(f"teacher.model={teacher}")
    return load_config(None, overrides)


@pytest.fixture(scope="module")
def base_student(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained student as the flow's build_student saves it: weights, tokenizer, prompt, labels."""
    model, tokenizer = load_model(str(tiny_model_dir))
    return Classifier(model, tokenizer, PROMPT, LABELS).save(tmp_path_factory.mktemp("base") / "student")


@pytest.fixture(scope="module")
def teacher_dir(tokenizer: Any) -> Path:
    """A different tiny Llama (2 layers, seed 1) with the same vocabulary: the logit_online teacher."""
    return build_tiny_llama(CACHE / "test-models" / "tiny-llama-2x64-teacher-v1", tokenizer, layers=2, seed=1)


def train_in_process(cfg: RunConfig, base: Path, work: Path) -> tuple[TrainResult, Path]:
    """The reference: the in-process training the flow's train task runs when num_processes is 1."""
    torch.manual_seed(cfg.data.seed)
    student = Classifier.load(base)
    inputs = DistillInputs(
        model=student.model,
        tokenizer=student.tokenizer,
        rows=make_rows(),
        prompt=student.prompt,
        student=cfg.student,
        distill=cfg.distill,
        output_dir=work / "trainer",
        seed=cfg.data.seed,
        teacher_model=cfg.teacher.model,
    )
    return train(inputs), student.save(work / "student")


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize(
    ("method", "accelerate_config"),
    [("sft", None), ("logit_online", str(ROOT / "infra" / "accelerate" / "cpu_ddp.yaml"))],
    ids=["sft-cli-flags", "logit_online-cpu_ddp.yaml"],
)
def test_two_processes_match_one(
    method: str,
    accelerate_config: str | None,
    base_student: Path,
    teacher_dir: Path,
    netns: list[str],
    tmp_path: Path,
) -> None:
    """Both launch paths: the default command line (what the flow runs) and the shipped CPU config file."""
    teacher = teacher_dir if method == "logit_online" else None
    ref, ref_folder = train_in_process(run_config(method, teacher), base_student, tmp_path / "one")
    cfg = run_config(method, teacher, num_processes=2, accelerate_config=accelerate_config)
    logged: list[tuple[int, dict[str, float]]] = []
    lines: list[str] = []
    result = launch_training(
        base_student,
        make_rows(),
        cfg,
        tmp_path / "student",
        tmp_path / "work",
        seed=cfg.data.seed,
        on_log=lambda step, logs: logged.append((step, logs)),
        wrap=netns,
        echo=lines.append,
    )
    out = "\n".join(lines)
    for rank in (0, 1):  # two ranks in one gloo process group, not two lone trainings
        assert f"rank {rank} of 2, process group backend gloo" in out, out[-3000:]
    assert result.method == ref.method == method
    assert result.steps == ref.steps == 8
    ref_losses = [h["loss"] for h in ref.history]
    losses = [h["loss"] for h in result.history]
    assert len(losses) == len(ref_losses) == 8
    assert losses == pytest.approx(ref_losses, abs=1e-4)
    assert ref_losses[-1] < ref_losses[0]  # it learned something: the comparison is not of no-ops
    # rank 0's log records reached the parent live, as the flow's MLflow callback gets them
    assert [s for s, logs in logged if "loss" in logs] == list(range(1, 9))
    assert [logs["loss"] for _, logs in logged if "loss" in logs] == pytest.approx(ref_losses, abs=1e-4)

    got, want, start = weights(tmp_path / "student"), weights(ref_folder), weights(base_student)
    assert got.keys() == want.keys()
    moved = max((want[k] - start[k]).abs().max().item() for k in want)
    assert moved > 1e-3  # 8 steps at lr 1e-3 moved the weights well past the tolerance
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst < 1e-4, f"largest weight difference {worst:.2e}"
    # the saved folder is a complete student: it loads with its prompt and labels
    trained = Classifier.load(tmp_path / "student")
    assert trained.labels == LABELS and trained.prompt == PROMPT


def test_batch_must_split_evenly() -> None:
    cfg = run_config(batch_size=6, num_processes=4)
    with pytest.raises(ValueError, match="not divisible"):
        per_device_batch(cfg.student, cfg.student.num_processes)
    assert per_device_batch(run_config(batch_size=8).student, 4) == 2


def test_failing_rank_raises_with_its_log(netns: list[str], tmp_path: Path) -> None:
    cfg = run_config(num_processes=2)
    with pytest.raises(LaunchError) as err:
        launch_training(
            tmp_path / "no-such-student",
            make_rows(8),
            cfg,
            tmp_path / "student",
            tmp_path / "work",
            wrap=netns,
            echo=lambda line: None,
        )
    message = str(err.value)
    # Both ranks hit the missing student; the first to fail makes torchrun stop the other, which under load
    # can happen before it writes its own report: at least one rank's report, each naming the cause.
    reports = re.findall(r"--- rank(\d) failed:\n(.*?)(?=\n--- |\Z)", message, flags=re.S)
    assert reports, message
    assert all("no-such-student" in text for _, text in reports), message
    assert not (tmp_path / "student").exists()


def test_single_process_config_is_refused(netns: list[str], tmp_path: Path) -> None:
    """accelerate starts ONE process for a MULTI_CPU config (like `--cpu`), without an error; potstill
    refuses to return that as a 2-process training."""
    config = tmp_path / "multi_cpu.yaml"
    shipped = (ROOT / "infra" / "accelerate" / "cpu_ddp.yaml").read_text()
    assert "distributed_type: MULTI_GPU" in shipped
    config.write_text(shipped.replace("distributed_type: MULTI_GPU", "distributed_type: MULTI_CPU"))
    cfg = run_config(num_processes=2, accelerate_config=str(config))
    with pytest.raises(LaunchError, match=r"started 1 rank\(s\), student.num_processes is 2"):
        launch_training(
            tmp_path / "no-model-needed",
            make_rows(8),
            cfg,
            tmp_path / "student",
            tmp_path / "work",
            wrap=netns,
            echo=lambda line: None,
        )


KILLED_PARENT = """
import json, sys
from pathlib import Path
from potstill.training.launch import launch_training
from tests.test_multiprocess_training import make_rows, run_config

base, work, wrap = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
cfg = run_config(num_processes=2, max_steps=100000)
launch_training(base, make_rows(), cfg, work / "student", work / "work", wrap=wrap, echo=lambda line: None,
                on_log=lambda step, logs: print("step", step, flush=True))
"""


def processes_naming(text: str) -> list[str]:
    """Live processes whose command line names `text` (here: the work folder of one training)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_killing_the_parent_kills_the_launcher_and_every_rank(
    base_student: Path, netns: list[str], tmp_path: Path
) -> None:
    """SIGKILL of the process that called launch_training (what `potstill run` is) while both ranks
    train: before, the accelerate agent and its ranks trained on and wrote the student folder later."""
    work = tmp_path / "killed-run"
    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, str(base_student), str(work), json.dumps(netns)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert parent.stdout is not None
    try:
        for line in parent.stdout:  # training has started on both ranks once rank 0 logs a step
            if line.startswith("step"):
                break
        else:
            pytest.fail(f"training never logged a step (rc {parent.wait()})")
        ranks = [p for p in processes_naming(str(work)) if "train-worker" in p]
        assert len(ranks) >= 2, processes_naming(str(work))
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while processes_naming(str(work)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_naming(str(work)) == []
        assert not (work / "student").exists()
    finally:
        parent.kill()
        for left in processes_naming(str(work)):  # a failed check leaves no orphan to the next test
            with contextlib.suppress(OSError):
                os.kill(int(left.split(":")[0]), signal.SIGKILL)


def listening(pids: set[str]) -> list[tuple[str, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state that one of `pids` holds, read from
    /proc/net/tcp and tcp6 (what `ss -ltnp` reads; iproute2 is not on every machine)."""
    owner = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owner[link[8:-1]] = pid
    found = []
    for family, af in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{family}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # per-word host order
            found.append((owner[fields[9]], socket.inet_ntop(af, raw), int(hex_port, 16)))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_a_two_rank_training_listens_on_loopback_only(base_student: Path, tmp_path: Path) -> None:
    """The real path, outside any network namespace: torchrun's store (in the agent) and gloo (in the
    ranks) listen, and only on 127.0.0.1. Before, the store bound `::` (every interface)."""
    work = tmp_path / "listeners"
    seen: set[tuple[str, str, int]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            pids = {p.split(":")[0] for p in processes_naming(str(work))}
            seen.update(listening(pids))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        launch_training(
            base_student, make_rows(), run_config(num_processes=2, max_steps=40), work / "student",
            work / "work", echo=lambda line: None,
        )  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert seen, "no listener seen: the check would pass vacuously"
    assert {addr for _, addr, _ in seen} == {"127.0.0.1"}, sorted(seen)
