import pytest

from potstill.data.catalog import Catalog, CatalogError
from potstill.data.versioning import VersionError
from potstill.prompts import PromptError, PromptTemplate


def test_template_split_render_and_digest():
    t = PromptTemplate("p", "Intro\nReview: {text}\nSentiment:")
    assert t.split() == ("Intro\nReview:", " {text}\nSentiment:")
    assert t.render({"text": "  two\nlines "}) == "Intro\nReview: two lines\nSentiment:"
    assert t.digest != PromptTemplate("p", "Intro\nReview: {text}\nLabel:").digest
    with pytest.raises(PromptError, match="needs field"):
        t.render({"premise": "x"})
    with pytest.raises(PromptError, match=r"no \{field\} placeholder"):
        PromptTemplate("q", "nothing").split()


def test_catalog_round_trip_by_name(project):
    cat = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    assert cat.root == project
    assert not cat.exists("train_set")
    rows = [
        {"id": "a", "text": "x", "label": "positive"},
        {"id": "b", "text": "y \u00e9", "label": "negative"},
    ]
    saved = cat.save("train_set", rows)
    assert saved.rows == 2 and saved.path == project / "catalog/data/polarity/pipeline/train_set.jsonl"
    assert saved.name == "polarity/train_set" and cat.full_name("train_set") == "polarity/train_set"
    assert cat.load("train_set") == rows
    assert cat.digest("train_set") == saved.digest
    cat.save("train_set", rows[:1])
    assert cat.digest("train_set") != saved.digest
    assert list(saved.path.parent.glob(".train_set*")) == []  # no temp file left behind


def test_catalog_errors_are_readable(project):
    cat = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    with pytest.raises(CatalogError, match=r"no dataset 'nope' in the catalog; known: \["):
        cat.load("nope")
    with pytest.raises(CatalogError, match="has no data yet"):
        cat.load("review_queue")
    with pytest.raises(VersionError, match=r"polarity/train_set@v3 does not exist; versions: none yet"):
        cat.load("train_set", version="v3")
    (project / "catalog/data/polarity/pipeline").mkdir(parents=True)
    (project / "catalog/data/polarity/pipeline/train_set.jsonl").write_text('{"id": "a"}\n{broken\n')
    with pytest.raises(CatalogError, match=r"train_set.jsonl:2: not valid JSON"):
        cat.load("train_set")


def test_catalog_prompts_and_bad_files(project):
    cat = Catalog.from_file(project / "catalog" / "catalog.yaml").for_task("polarity")
    teacher = cat.prompt("teacher_prompt")
    assert teacher.fields == ["text"] and teacher.text.endswith("Sentiment:")
    assert teacher.prefix.count("Review:") == 9  # 8 examples + the row's
    bad = project / "catalog" / "bad.yaml"
    bad.write_text("datasets:\n  x: {path: a, kind: poetry, role: prompts}\n")
    with pytest.raises(CatalogError, match="kind"):
        Catalog.from_file(bad)
    bad.write_text("dataset: {}\n")
    with pytest.raises(CatalogError, match="unknown top-level key"):
        Catalog.from_file(bad)
