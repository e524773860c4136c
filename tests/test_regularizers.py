import math

import pytest
import torch
from torch import nn

from dstcore import DstError
from dstcore.sparsity.regularizers import ActivationPenalty, hoyer, l1, tl1

# A batch of two "activation maps" with hand-computable values.
A = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 3.0], [0.0, 0.0]]])  # shape [2, 2, 2]


def test_l1_hand_computed():
    assert l1(A).item() == pytest.approx((1 + 2 + 3) / 2)


def test_hoyer_hand_computed():
    # (sum|a|)^2 / sum a^2 / N = 36 / 14 / 2
    assert hoyer(A).item() == pytest.approx(36 / 14 / 2)


def test_hoyer_all_zero_is_zero_with_finite_gradient():
    a = torch.zeros(3, 4, requires_grad=True)
    value = hoyer(a)
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(a.grad).all()


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_tl1_hand_computed(beta):
    expected = sum((1 + beta) * v / (beta + v) for v in (1.0, 2.0, 3.0)) / 2
    assert tl1(A, beta).item() == pytest.approx(expected)


def test_tl1_limits_l0_and_l1():
    # beta -> 0: each non-zero counts 1 (l0); beta -> inf: |a| (l1).
    assert tl1(A, 1e-9).item() == pytest.approx(3 / 2, rel=1e-6)
    assert tl1(A, 1e9).item() == pytest.approx(6 / 2, rel=1e-6)


def test_tl1_rejects_nonpositive_beta():
    with pytest.raises(DstError):
        tl1(A, 0.0)


@pytest.mark.parametrize("fn", [l1, hoyer, lambda a: tl1(a, 0.7)])
def test_gradcheck_float64(fn):
    torch.manual_seed(0)
    a = (torch.rand(2, 3, 4, dtype=torch.float64) + 0.1) * torch.sign(torch.randn(2, 3, 4,
                                                                                 dtype=torch.float64))
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (a,), eps=1e-6, atol=1e-5)


def test_tl1_gradient_hand_computed():
    # d/da (1+b)a/(b+a) = (1+b) b / (b+a)^2 for a > 0, divided by N = 1
    a = torch.tensor([[0.5]], dtype=torch.float64, requires_grad=True)
    tl1(a, 2.0).backward()
    assert a.grad.item() == pytest.approx(3 * 2 / 2.5**2)


def test_penalty_sums_layers_with_weights():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 2))
    layers = [("2", net[2]), ("4", net[4])]
    x = torch.randn(5, 3)
    with ActivationPenalty(layers, "l1", layer_weights={"4": 3.0}) as penalty:
        net(x)
        total = penalty.pop()
        assert penalty.pop() == 0.0  # reset after pop
    h1 = torch.relu(net[0](x))
    h2 = torch.relu(net[2](h1))
    assert total.item() == pytest.approx(l1(h1).item() + 3.0 * l1(h2).item(), rel=1e-6)
    assert all(not m._forward_pre_hooks for m in net)  # hooks removed


def test_penalty_rejects_unknown_names():
    lin = nn.Linear(2, 2)
    with pytest.raises(DstError, match="unknown regulariser"):
        ActivationPenalty([("x", lin)], "l2")
    with pytest.raises(DstError, match="layer_weights"):
        ActivationPenalty([("x", lin)], "l1", layer_weights={"nope": 1.0})


def test_penalty_inactive_without_grad():
    lin = nn.Linear(2, 2)
    with ActivationPenalty([("x", lin)], "l1") as penalty, torch.no_grad():
        lin(torch.ones(1, 2))
        assert penalty.pop() == 0.0
    assert math.isfinite(1.0)
