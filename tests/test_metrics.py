import pytest

from potstill import metrics as M

GOLD = ["pos", "pos", "pos", "neg", "neg", "neu"]
PRED = ["pos", "neg", "pos", "neg", "pos", "neg"]
LABELS = ["neg", "neu", "pos"]


def test_accuracy_and_agreement_by_hand():
    assert M.accuracy(GOLD, PRED) == pytest.approx(3 / 6)
    assert M.agreement(PRED, PRED) == 1.0
    assert M.agreement(["a", "b"], ["a", "c"]) == 0.5


def test_confusion_matrix_by_hand():
    assert M.confusion_matrix(GOLD, PRED, LABELS) == [[1, 0, 1], [1, 0, 0], [1, 0, 2]]


def test_macro_f1_by_hand():
    # neg: tp=1 fp=2 fn=1 -> 2/5; neu: never right -> 0; pos: tp=2 fp=1 fn=1 -> 4/6
    assert M.macro_f1(GOLD, PRED, LABELS) == pytest.approx((2 / 5 + 0 + 4 / 6) / 3)


def test_per_class_recall_by_hand():
    assert M.per_class_recall(GOLD, PRED, LABELS) == pytest.approx({"neg": 0.5, "neu": 0.0, "pos": 2 / 3})


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        M.accuracy(["a"], ["a", "b"])


def test_confusion_plot_is_written(tmp_path):
    path = M.plot_confusion(
        {"teacher": [[3, 1], [0, 4]], "student": [[2, 2], [1, 3]]}, ["neg", "pos"], tmp_path / "cm.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
