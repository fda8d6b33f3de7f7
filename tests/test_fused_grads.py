"""Training-only autograd functions of the decoder: the same values and gradients as the plain
expressions they replace (which inference and ONNX export keep using)."""
from __future__ import annotations

import torch
from torch.autograd import gradcheck

from sparseinst_cli.modeling.decoder import InstanceBranch
from sparseinst_cli.modeling.small_head import (
    CentrePenalty,
    SigmoidNormalise,
    centre_penalty,
    subtract_centre_penalty,
)


def _plain_normalise(x: torch.Tensor) -> torch.Tensor:
    prob = x.sigmoid()
    return prob / prob.sum(-1, keepdim=True).clamp(min=1e-6)


def _plain_centre_penalty(masks, centres, spread, size):
    return (masks - centre_penalty(centres, spread, size)).unflatten(2, size)


def _values_and_grads(fn, inputs, grad_out):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in inputs]


def test_sigmoid_normalise_gradients_are_exact():
    torch.manual_seed(0)
    x = (3 * torch.randn(2, 6, 30, dtype=torch.float64)).requires_grad_()
    assert gradcheck(SigmoidNormalise.apply, (x,))


def test_sigmoid_normalise_matches_the_plain_expression():
    torch.manual_seed(0)
    x, g = 4 * torch.randn(2, 12, 400), torch.randn(2, 12, 400)
    fused, (fused_grad,) = _values_and_grads(SigmoidNormalise.apply, [x], g)
    plain, (plain_grad,) = _values_and_grads(_plain_normalise, [x], g)
    assert torch.equal(fused, plain)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-5, atol=1e-9)


def test_centre_penalty_gradients_are_exact():
    torch.manual_seed(0)
    size = (5, 7)
    masks = torch.randn(2, 3, 35, dtype=torch.float64)
    centres = 5 * torch.rand(2, 3, 2, dtype=torch.float64)
    spread = torch.rand(2, 3, 1, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (masks, centres, spread))
    assert gradcheck(lambda m, c, s: CentrePenalty.apply(m, c, s, size), inputs)


def test_centre_penalty_matches_the_plain_expression_in_bf16_and_fp32():
    torch.manual_seed(0)
    size = (24, 20)
    centres, spread = 20 * torch.rand(2, 8, 2), torch.rand(2, 8, 1)
    g = torch.randn(2, 8, *size)
    for dtype in (torch.float32, torch.bfloat16):  # autocast hands the fused one bf16 masks
        masks = torch.randn(2, 8, 24 * 20).to(dtype)
        inputs = [masks, centres, spread]
        fused, fused_grads = _values_and_grads(
            lambda m, c, s: CentrePenalty.apply(m, c, s, size), inputs, g)
        plain, plain_grads = _values_and_grads(
            lambda m, c, s: _plain_centre_penalty(m, c, s, size).float(), inputs, g)
        assert fused.dtype == torch.float32
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-4)
        for a, b in zip(fused_grads, plain_grads, strict=True):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)


def test_the_fused_functions_run_only_when_a_gradient_is_wanted():
    """Inference (and the traced ONNX graph) keep the plain expressions."""
    branch = InstanceBranch(in_channels=8, num_classes=2, kind="giam", num_masks=4, groups=2,
                            dim=8, num_convs=1, kernel_dim=4, centre_prior=True,
                            query_anchors=False)
    x = torch.randn(1, 8, 10)
    with torch.no_grad():
        assert branch.normalise(x).grad_fn is None
    assert type(branch.normalise(x.requires_grad_()).grad_fn).__name__.startswith(
        "SigmoidNormalise")
    masks, centres, spread = torch.randn(1, 4, 12), torch.rand(1, 4, 2), torch.rand(1, 4, 1)
    assert subtract_centre_penalty(masks, centres, spread, (3, 4)).grad_fn is None
    out = subtract_centre_penalty(masks, centres, spread.requires_grad_(), (3, 4))
    assert type(out.grad_fn).__name__.startswith("CentrePenalty")


def test_oriented_centre_penalty_gradients_are_exact():
    torch.manual_seed(0)
    size = (5, 7)
    masks = torch.randn(2, 3, 35, dtype=torch.float64)
    centres = 5 * torch.rand(2, 3, 2, dtype=torch.float64)
    spread = torch.rand(2, 3, 3, dtype=torch.float64)  # (a, c, b)
    inputs = tuple(t.requires_grad_() for t in (masks, centres, spread))
    assert gradcheck(lambda m, c, s: CentrePenalty.apply(m, c, s, size), inputs)


def test_oriented_centre_penalty_is_the_quadratic_form():
    """a dx^2 + c dy^2 + 2 b dx dy at every cell; with b = 0 and a = c the round prior."""
    size = (4, 6)
    centres = torch.tensor([[[2.5, 1.0]]])
    a, c, b = 0.3, 0.05, 0.1
    got = centre_penalty(centres, torch.tensor([[[a, c, b]]]), size).reshape(size)
    ys, xs = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    dx, dy = xs - 2.5, ys - 1.0
    torch.testing.assert_close(got, a * dx**2 + c * dy**2 + 2 * b * dx * dy)
    round_ = centre_penalty(centres, torch.tensor([[[0.2]]]), size)
    torch.testing.assert_close(centre_penalty(centres, torch.tensor([[[0.2, 0.2, 0.0]]]), size),
                               round_)


def test_spread_head_starts_round_and_stays_positive_semi_definite():
    from sparseinst_cli.modeling.small_head import SpreadHead

    torch.manual_seed(0)
    head = SpreadHead(16, "elongated")
    a, c, b = head(torch.zeros(1, 4, 16)).unbind(-1)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(b, torch.zeros_like(b))
    with torch.no_grad():
        head.weight.normal_(std=3.0)
    a, c, b = head(torch.randn(2, 50, 16)).unbind(-1)
    assert (a >= 0).all() and (c >= 0).all() and (b.square() <= a * c + 1e-7).all()
    assert set(dict(head.named_parameters())) == {"weight", "bias"}  # checkpoint keys
