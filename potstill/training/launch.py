"""Multi-process student training: the same training entry point, run by N ranks under `accelerate launch`.

The parent (the flow's train task) cannot hand a loaded model to other processes, so it writes a *spec*:
the training rows as JSONL, the resolved run config as YAML, the saved base student folder, the output
folder and the seed. `accelerate launch ... -m potstill.cli train-worker spec.json` starts N ranks; each
loads the base student, trains with the potstill trainer, and rank 0 alone saves the trained student and
the `TrainResult` JSON. The parent streams the ranks' output, forwards rank 0's log records to `on_log`
(MLflow metrics keep arriving live) and reads the result back.

Same global batch as one process: every rank gets `student.batch_size / N` rows per step, and the
length-grouped sampler is built for the *global* batch (see `global_batch_sampler`), so step k of N
ranks trains on exactly the rows of step k of one process.

Facts this relies on (checked here, accelerate 1.15, torch 2.13 CPU): on CPU, `--cpu` silently runs one
process; `--multi_gpu --num_processes N --mixed_precision no` with `use_cpu=True` in the trainer config
runs DDP over gloo; without `use_cpu=True` every rank trains alone (no gradient sync, no error).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from potstill.config import RunConfig, StudentConfig, to_yaml
from potstill.processes import die_with_parent, with_parent
from potstill.prompts import PromptTemplate

if TYPE_CHECKING:
    from potstill.training.methods import TrainResult

LOG_TAG = "POTSTILL_LOG "  # rank 0 prints `LOG_TAG {"step": .., "logs": {..}}` lines; the parent parses them
SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
TAIL_LINES = 40
RANK_PREFIX = re.compile(r"^\[default\d+\]:")  # what torchrun's --tee puts before each rank's lines


class LaunchError(RuntimeError):
    """A rank failed: the message names it and carries its last output lines."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a rank needs, as plain paths and values (JSON)."""

    rows: str  # JSONL, one training row per line
    config: str  # the resolved RunConfig as YAML
    base: str  # saved base student (a potstill Classifier or Generator folder)
    output: str  # rank 0 saves the trained student here
    trainer_dir: str  # scratch folder for the trainer
    result: str  # rank 0 writes the TrainResult JSON here
    seed: int
    teacher_prompt: dict[str, str] | None = None  # {"name", "text"} for methods that prompt the teacher
    signals_dir: str | None = None  # stored teacher signals (logit_offline)


def per_device_batch(student: StudentConfig, num_processes: int) -> int:
    """`student.batch_size` is the global batch; each rank takes an equal share of it."""
    if num_processes < 1:
        raise ValueError(f"student.num_processes must be >= 1, got {num_processes}")
    if student.batch_size % num_processes:
        raise ValueError(
            f"student.batch_size {student.batch_size} is not divisible by student.num_processes "
            f"{num_processes}: the global batch must split evenly across ranks"
        )
    return student.batch_size // num_processes


def write_spec(
    work_dir: Path,
    base: Path,
    rows: list[dict[str, Any]],
    cfg: RunConfig,
    output: Path,
    seed: int,
    teacher_prompt: PromptTemplate | None = None,
    signals_dir: Path | None = None,
) -> Path:
    """Serialise a training job into `work_dir` and return the spec file (clearing an earlier job's result,
    error and log files there, so they cannot be mistaken for this one's)."""
    import shutil

    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in [work_dir / RESULT_FILE, *work_dir.glob("error-rank*.txt")]:
        stale.unlink(missing_ok=True)
    shutil.rmtree(work_dir / "rank-logs", ignore_errors=True)
    rows_file = work_dir / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    config_file = work_dir / "config.yaml"
    config_file.write_text(to_yaml(cfg))
    spec = WorkerSpec(
        rows=str(rows_file),
        config=str(config_file),
        base=str(Path(base).resolve()),
        output=str(Path(output).resolve()),
        trainer_dir=str((work_dir / "trainer").resolve()),
        result=str((work_dir / RESULT_FILE).resolve()),
        seed=seed,
        teacher_prompt={"name": teacher_prompt.name, "text": teacher_prompt.text} if teacher_prompt else None,
        signals_dir=str(Path(signals_dir).resolve()) if signals_dir else None,
    )
    path = work_dir / SPEC_FILE
    path.write_text(json.dumps(asdict(spec), indent=2))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(spec: Path, student: StudentConfig, log_dir: Path) -> list[str]:
    """The `accelerate launch` command line for a spec.

    Without a config file: DDP (`--multi_gpu`; on CPU it is DDP over gloo because the trainer config has
    `use_cpu=True`, and `--cpu` would silently run one process). With `student.accelerate_config` (e.g.
    infra/accelerate/fsdp2.yaml) the file chooses the distributed type; `--num_processes` still wins.
    `--tee 3 --log_dir` keeps each rank's stdout/stderr in its own file, for error reports.
    """
    n = student.num_processes
    cmd = [sys.executable, "-m", "potstill.training.agent"]  # accelerate launch, its store on loopback
    if student.accelerate_config:
        cmd += ["--config_file", str(Path(student.accelerate_config).resolve())]
    else:
        cmd += ["--multi_gpu", "--mixed_precision", "bf16" if student.bf16 else "no"]
    if student.use_cpu:
        # the CPU cores are shared by the ranks: one rank per core share, not N × all cores
        cmd += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // n))]
    cmd += ["--num_processes", str(n), "--num_machines", "1", "--main_process_ip", "127.0.0.1"]
    cmd += ["--main_process_port", str(_free_port()), "--tee", "3", "--log_dir", str(log_dir)]
    return [*cmd, "-m", "potstill.cli", "train-worker", str(spec)]


def _rank_tails(log_dir: Path, n: int = TAIL_LINES) -> dict[str, list[str]]:
    """Last lines of every rank's stderr+stdout files that torchrun's `--tee` wrote under `log_dir`."""
    tails: dict[str, list[str]] = {}
    for f in sorted(log_dir.rglob("*.log")):
        rank = f.parent.name
        lines = f.read_text(errors="replace").splitlines()
        if lines:
            tails.setdefault(rank, []).extend(lines[-n:])
    return tails


def _error_report(work_dir: Path, log_dir: Path, returncode: int, console: deque[str]) -> str:
    errors = sorted(work_dir.glob("error-rank*.txt"))
    parts = [f"accelerate launch exited with {returncode}"]
    for e in errors:
        parts.append(f"--- {e.stem.removeprefix('error-')} failed:\n{e.read_text().rstrip()}")
    failed = {e.stem.removeprefix("error-rank") for e in errors}
    for rank, lines in _rank_tails(log_dir).items():
        if not failed or rank in failed:
            parts.append(f"--- rank {rank}, last {len(lines)} lines:\n" + "\n".join(lines))
    if len(parts) == 1:
        parts.append("--- launcher output, last lines:\n" + "\n".join(console))
    return "\n".join(parts)


def launch_training(
    base: Path,
    rows: list[dict[str, Any]],
    cfg: RunConfig,
    output: Path,
    work_dir: Path,
    seed: int = 13,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    teacher_prompt: PromptTemplate | None = None,
    signals_dir: Path | None = None,
    wrap: Sequence[str] = (),
    echo: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the student in `base` on `rows` with `cfg.student.num_processes` ranks; the trained student
    is saved to `output`. Returns the TrainResult of rank 0 (its loss history is the all-rank mean).

    `wrap` prefixes the command (tests run it inside a private network namespace); `echo` receives every
    output line (default: this process's stderr)."""
    from potstill.training.methods import TrainResult

    per_device_batch(cfg.student, cfg.student.num_processes)
    if not rows:
        raise ValueError("no training rows: every teacher label was routed to review")
    spec = write_spec(work_dir, base, rows, cfg, output, seed, teacher_prompt, signals_dir)
    log_dir = work_dir / "rank-logs"
    # The launcher dies with this process and each rank with the launcher (potstill.processes): a killed
    # run leaves no rank behind to overwrite a student folder later.
    cmd = with_parent([*wrap, *launch_command(spec, cfg.student, log_dir)])
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    console: deque[str] = deque(maxlen=TAIL_LINES)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GLOO_SOCKET_IFNAME": "lo"}  # one machine: loopback only
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                console.append(line)
                tagged = line.partition(LOG_TAG)[2] if LOG_TAG in line else ""
                if tagged:
                    if on_log:
                        record = json.loads(tagged)
                        on_log(int(record["step"]), record["logs"])
                    continue
                if RANK_PREFIX.sub("", line).strip():  # tqdm leaves blank lines: keep the log readable
                    echo(line)
            returncode = proc.wait()
        except BaseException:  # Ctrl-C, a cancelled task, a failing on_log: stop the ranks too
            proc.terminate()  # torchrun forwards SIGTERM to the ranks
            raise
    result_file = Path(json.loads(spec.read_text())["result"])
    if returncode != 0 or not result_file.exists():
        raise LaunchError(_error_report(work_dir, log_dir, returncode, console))
    return TrainResult(**json.loads(result_file.read_text()))


# ---- the worker side: one rank


def global_batch_sampler(world_size: int) -> None:
    """Make the Trainer's length-grouped sampler group by the *global* batch in every rank.

    transformers builds `LengthGroupedSampler(per_device_batch)`; its mega-batch size is derived from that
    batch size, so with N ranks the index order differs from one process at batch N × per_device (e.g. 40
    rows: mega-batches of 10 instead of 8) and the steps see different rows. Built with the global batch,
    every rank draws the same permutation (same seed) and the distributed loader hands rank r the r-th
    consecutive slice of each global batch: the rows of step k equal those of one process.
    """
    import transformers
    from transformers.trainer_pt_utils import LengthGroupedSampler

    original = transformers.Trainer._get_train_sampler
    if getattr(original, "_potstill_global", False) or world_size <= 1:
        return

    def sampler(self: Any, train_dataset: Any = None) -> Any:
        out = original(self, train_dataset)
        if isinstance(out, LengthGroupedSampler):
            out.batch_size = out.batch_size * world_size
        return out

    sampler._potstill_global = True  # type: ignore[attr-defined]
    transformers.Trainer._get_train_sampler = sampler  # type: ignore[method-assign]


def _save_full_model(classifier: Any, output: Path, rank: int) -> None:
    """Rank 0 saves the trained student. Sharded parameters are gathered first, on all ranks: FSDP2
    (DTensor parameters) through torch.distributed.checkpoint, DeepSpeed ZeRO-3 (`ds_id` parameters)
    through `GatheredParameters`. Plain DDP holds full replicas: rank 0 saves as is."""
    import dataclasses
    import shutil

    model = classifier.model
    params = list(model.parameters())
    state = None
    if any(type(p).__name__ == "DTensor" for p in params):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif any(hasattr(p, "ds_id") for p in params):
        import deepspeed  # only present on DeepSpeed hosts

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if rank != 0:
        return
    shutil.rmtree(output, ignore_errors=True)
    if state is not None:
        classifier = dataclasses.replace(classifier, model=_GatheredWeights(model, state))
    classifier.save(output)


@dataclass(frozen=True)
class _GatheredWeights:
    """The trained model as a student's `save` sees it, writing the gathered full state dict."""

    model: Any
    state: dict[str, Any]

    def save_pretrained(self, folder: Path) -> None:
        self.model.save_pretrained(folder, state_dict=self.state)


def _train(spec: WorkerSpec, cfg: RunConfig, classifier: Any, rows: list[dict[str, Any]], on_log: Any) -> Any:
    """The one potstill training entry point, `potstill.training.methods.train`, exactly as the in-process
    path."""
    from potstill.training.methods import DistillInputs
    from potstill.training.methods import train as train_method

    tp = spec.teacher_prompt
    return train_method(
        DistillInputs.for_run(
            cfg,
            classifier,
            rows,
            Path(spec.trainer_dir),
            seed=spec.seed,
            on_log=on_log,
            teacher_prompt=PromptTemplate(tp["name"], tp["text"]) if tp else None,
            signals_dir=Path(spec.signals_dir) if spec.signals_dir else None,
        )
    )


def _check_synchronised(world: int, rank: int) -> None:
    """Fail loudly when N ranks trained without a process group: each would have trained alone on its
    share, with no gradient sync and no error (what accelerate does on a CPU host without use_cpu)."""
    import torch.distributed as dist

    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    print(f"potstill train-worker: rank {rank} of {world}, process group backend {backend}", flush=True)
    if world > 1 and (backend in (None, "undefined") or dist.get_world_size() != world):
        raise RuntimeError(
            f"rank {rank} of {world} trained without a {world}-rank process group (backend {backend}): "
            "the ranks did not synchronise gradients. On CPU set student.use_cpu: true."
        )


def run_worker(spec_path: Path) -> int:
    """One rank (`potstill train-worker spec.json`): train, then rank 0 saves the model and the result."""
    from potstill.config import load_config

    die_with_parent()  # the launcher's agent gone (killed with `potstill run`): this rank goes too
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    spec = WorkerSpec(**json.loads(Path(spec_path).read_text()))
    try:
        cfg = load_config(spec.config)
        if world != cfg.student.num_processes:
            raise RuntimeError(
                f"accelerate launch started {world} rank(s), student.num_processes is "
                f"{cfg.student.num_processes}: check student.accelerate_config (a MULTI_CPU or use_cpu: true "
                "config, like `--cpu`, runs a single process)"
            )
        student = cfg.student.model_copy(update={"batch_size": per_device_batch(cfg.student, world)})
        cfg = cfg.model_copy(update={"student": student})
        rows = [json.loads(line) for line in Path(spec.rows).read_text().splitlines() if line.strip()]
        import torch  # after the checks above: a misconfigured launch fails in seconds

        from potstill.training.generator import load_student

        global_batch_sampler(world)
        torch.manual_seed(spec.seed)
        classifier = load_student(Path(spec.base))

        def on_log(step: int, logs: dict[str, float]) -> None:
            print(LOG_TAG + json.dumps({"step": step, "logs": logs}), flush=True)

        result = _train(spec, cfg, classifier, rows, on_log if rank == 0 else None)
        _check_synchronised(world, rank)
        _save_full_model(classifier, Path(spec.output), rank)
        if rank == 0:
            tmp = Path(spec.result + ".tmp")
            tmp.write_text(json.dumps(asdict(result)))
            tmp.replace(spec.result)
    except BaseException:
        Path(spec.result).parent.joinpath(f"error-rank{rank}.txt").write_text(traceback.format_exc())
        raise
    return 0
