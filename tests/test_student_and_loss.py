import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from potstill.prompts import PromptTemplate
from potstill.training.classifier import Classifier
from potstill.training.methods.sft import label_only_loss
from potstill.training.student import prune_layers

IDS = torch.tensor([[5, 900, 33, 4021, 17, 250, 3]])


@torch.no_grad()
def test_keeping_every_layer_reproduces_the_teacher(tiny_model):
    student = prune_layers(tiny_model, [0, 1, 2, 3])
    assert torch.allclose(student(IDS).logits, tiny_model(IDS).logits, atol=1e-5)


@torch.no_grad()
def test_pruned_layers_are_the_teachers_layers(tiny_model):
    student = prune_layers(tiny_model, [0, 3])
    assert student.config.num_hidden_layers == 2
    t_layers, s_layers = tiny_model.model.layers, student.model.layers
    assert torch.equal(s_layers[1].mlp.up_proj.weight, t_layers[3].mlp.up_proj.weight)
    assert torch.equal(s_layers[0].self_attn.q_proj.weight, t_layers[0].self_attn.q_proj.weight)
    assert s_layers[1].mlp.up_proj.weight.data_ptr() != t_layers[3].mlp.up_proj.weight.data_ptr()
    assert torch.equal(student.lm_head.weight, tiny_model.lm_head.weight)
    with pytest.raises(ValueError, match="out of range: the teacher has 4 layers"):
        prune_layers(tiny_model, [0, 4])


def test_pruned_student_saves_and_reloads_with_its_prompt(tiny_model, tokenizer, tmp_path):
    student = prune_layers(tiny_model, [1, 2])
    clf = Classifier(
        student,
        tokenizer,
        PromptTemplate("student_prompt", "Review: {text}\nSentiment:"),
        ["negative", "positive"],
    )
    clf.save(tmp_path / "s")
    back = Classifier.load(tmp_path / "s")
    assert back.prompt == clf.prompt and back.labels == clf.labels
    rows = [{"text": "good"}, {"text": "a dull and long mess"}]
    for a, b in zip(clf.predict(rows), back.predict(rows), strict=True):
        assert a.distribution == pytest.approx(b.distribution, abs=1e-6)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert reloaded.config.num_hidden_layers == 2


def test_label_only_loss_equals_full_logits_cross_entropy(tiny_model):
    """Pinned against the definition: CE of shifted full logits with ignore_index=-100."""
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 7:] = ids[0, 7:]
    labels[1, 4:6] = ids[1, 4:6]
    labels[2, 8] = ids[2, 8]
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        loss, n = label_only_loss(tiny_model, inputs)
        logits = tiny_model(input_ids=ids, attention_mask=mask).logits.double()
    want = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert n == 5
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
