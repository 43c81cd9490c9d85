"""Least-squares refitting of the kept weights (extract/refit.py), on tensors and a real (tiny) GPT-2."""
import torch
from transformers import AutoModelForCausalLM

from extract.arch import sparse_tensors
from extract.refit import _recorded, refit_to_teacher, refit_weights
from extract.sparsity import project_


def test_refit_recovers_a_sparse_map_on_its_pattern():
    torch.manual_seed(0)
    x = torch.randn(500, 12)
    truth = torch.randn(12, 5) * (torch.rand(12, 5) < 0.4)
    truth[:, 4] = 0  # a unit with nothing kept stays empty
    start = torch.where(truth != 0, torch.randn(12, 5), torch.zeros(()))  # the right pattern, wrong values
    solved = refit_weights(start, x, x @ truth)
    assert torch.equal(solved != 0, truth != 0)
    assert torch.allclose(solved, truth, rtol=1e-2, atol=1e-3)  # (the ridge shrinks them by about 0.1%)


def test_refit_keeps_every_pattern_and_brings_each_matrix_closer_to_the_dense_one(tiny_model_dir):
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()
    with torch.no_grad():  # a dense model that computes something: the fresh checkpoint's blocks are near no-ops
        for p in teacher.parameters():
            p.mul_(3.0)
        student.load_state_dict(teacher.state_dict())
    tensors = sparse_tensors(student)
    project_(tensors, 0.3, min_per_unit=2)
    patterns = {t.name: t.param.detach() != 0 for t in tensors}
    fit, unseen = torch.randint(0, 500, (8, 32)), torch.randint(0, 500, (8, 32))
    first = student.transformer.h[0].attn.c_attn

    def first_error(blocks):  # the first matrix sees the same input before and after: its error must fall
        x = _recorded(student, [first], blocks, 8, "input")[0]
        y = _recorded(teacher, [teacher.transformer.h[0].attn.c_attn], blocks, 8, "output")[0]
        return float((x @ first.weight + first.bias - y).square().sum() / y.square().sum())

    def logits_error(blocks):
        with torch.no_grad():
            s, t = student(input_ids=blocks).logits, teacher(input_ids=blocks).logits
        return float((s - t).square().mean())

    before = (first_error(fit), logits_error(unseen))
    refit_to_teacher(student, teacher, fit)
    assert student.training  # its mode is given back
    for t in sparse_tensors(student):
        assert not (t.param.detach() != 0)[~patterns[t.name]].any(), t.name  # nothing outside the top-k
    assert first_error(fit) < 0.9 * before[0]
    assert logits_error(unseen) < before[1]  # closer to the dense model on text it was not fitted on


def test_refits_fall_every_n_steps_of_the_anneal_and_at_the_step_that_reaches_the_target():
    from extract.recipe import load_recipe
    from extract.sparsifier import Sparsifier
    from tests.families import tiny_model

    def due(*overrides):
        recipe = load_recipe("tiny-python", ["train.steps=300", *overrides])[0]
        sparsifier = Sparsifier(tiny_model("gpt2"), recipe.sparsity, recipe.train.steps)
        return [step + 1 for step in range(300) if sparsifier.refit_due(step)]  # steps done when refitting

    assert due("sparsity.refit_every=25") == [25, 50, 75, 100, 125, 150]  # the anneal ends at 150
    assert due("sparsity.refit_every=40", "sparsity.anneal_fraction=0.65") == [40, 80, 120, 160, 195]
    assert due() == []  # off by default
