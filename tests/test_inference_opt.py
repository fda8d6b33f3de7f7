"""Inference rewrites keep the outputs: BN folding (checked per backbone) and channels-last."""

from __future__ import annotations

import pytest
import torch
from conftest import LAYOUT_TO_ZOO, official_state_dict

from sparseinst_cli.checkpoint import load_weights
from sparseinst_cli.config import load_config
from sparseinst_cli.modeling import build_model
from sparseinst_cli.modeling.fuse import fold_bn_unchecked
from sparseinst_cli.modeling.inference import optimize_for_inference


@pytest.mark.parametrize(
    ("layout", "expected_folds"),
    [("r50_giam", 53), ("r50vd_dcn_giam", 55), ("cspdarknet53_giam", 67), ("pvt_b1_giam", 0)],
)
def test_optimized_model_matches(layout, expected_folds):
    cfg = load_config(LAYOUT_TO_ZOO[layout])
    model = build_model(cfg.model).eval()
    load_weights(model, {"model": official_state_dict(layout)}, layout=cfg.model.checkpoint_layout)
    images = torch.rand(1, 3, 160, 224) * 255
    with torch.no_grad():
        reference = model(images)
        fast = optimize_for_inference(model)
        out = fast(images.contiguous(memory_format=torch.channels_last))
    for key in reference:
        assert torch.allclose(out[key], reference[key], atol=1e-4), key
    import copy

    assert fold_bn_unchecked(copy.deepcopy(model.backbone)) == expected_folds
    # The original network is untouched: still has its BatchNorm modules.
    assert any("FrozenBatchNorm" in type(m).__name__ for m in model.backbone.modules()) == (
        expected_folds > 0
    )


def test_folding_refuses_a_wrong_pairing():
    """A conv followed (in registration order) by a BN that it does not feed is left alone."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    from sparseinst_cli.modeling.fuse import fold_frozen_bn

    class Misordered(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = FrozenBatchNorm2d(3)
            self.bn.weight.fill_(2.0)

        def forward(self, x):
            return [self.conv(self.bn(x))]  # BN runs first: folding would be wrong

    module = Misordered()
    out, count = fold_frozen_bn(module, torch.randn(1, 3, 8, 8))
    assert count == 0 and out is module
