"""Optimizer parameter groups and the starting weights of a training run."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from sparseinst_cli.config import SolverConfig, load_config
from sparseinst_cli.errors import UserError
from sparseinst_cli.modeling import build_model
from sparseinst_cli.modeling.backbone import TimmBackbone
from sparseinst_cli.training.optim import build_optimizer, param_groups
from sparseinst_cli.training.weights import load_backbone_weights, skipped_rows


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.GroupNorm(2, 4), nn.Linear(4, 2))


def test_groups_split_backbone_and_norm_parameters():
    solver = SolverConfig(lr=1e-3, weight_decay=0.05, weight_decay_norm=0.0,
                          backbone_lr_multiplier=0.1)
    groups = {g["name"]: g for g in param_groups(Net(), solver)}
    assert set(groups) == {"backbone", "backbone_norm", "head", "head_norm"}
    net = Net()
    sizes = {g["name"]: sum(p.numel() for p in g["params"]) for g in param_groups(net, solver)}
    assert sizes == {"backbone": 4 * 3 * 9 + 4, "backbone_norm": 8, "head": 20 + 10,
                     "head_norm": 8}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone_norm"]["weight_decay"] == 0.0
    assert groups["head"]["weight_decay"] == 0.05 and groups["head"]["base_lr"] == 1e-3


def test_every_trainable_parameter_once_and_frozen_left_out():
    cfg = load_config("demo", ["model.backbone.name=test_resnet"])
    model = build_model(cfg.model)
    model.decoder.inst_branch.objectness.weight.requires_grad_(False)
    opt = build_optimizer(model, cfg.solver)
    in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(in_opt) == sorted(trainable) and len(set(in_opt)) == len(in_opt)


def _body() -> TimmBackbone:
    return TimmBackbone(name="resnet18", norm="frozen_bn")


def test_torchvision_and_timm_backbone_checkpoints_load(tmp_path):
    import timm

    torch.manual_seed(1)
    classifier = timm.create_model("resnet18")  # torchvision and timm share these names
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in classifier.state_dict().items()}},
               path)
    body = _body()
    report = load_backbone_weights(body.body, path)
    assert report.clean, report.describe()
    torch.testing.assert_close(body.body.layer4[1].conv2.weight, classifier.layer4[1].conv2.weight)


def test_detectron2_caffe2_pkl_loads_and_refuses_code(tmp_path):
    body = _body()
    c2 = {"conv1_w": torch.randn(64, 3, 7, 7).numpy(),
          "res_conv1_bn_s": torch.rand(64).numpy(),
          "res3_0_branch1_w": torch.randn(128, 64, 1, 1).numpy(),
          "res3_0_branch2b_bn_riv": torch.rand(128).numpy(),
          "pred_w": torch.randn(1000, 512).numpy()}
    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps({"model": c2, "__author__": "Caffe2"}))
    report = load_backbone_weights(body.body, path)
    assert not report.unexpected
    torch.testing.assert_close(body.body.bn1.weight, torch.from_numpy(c2["res_conv1_bn_s"]))
    torch.testing.assert_close(body.body.layer2[0].bn2.running_var,
                               torch.from_numpy(c2["res3_0_branch2b_bn_riv"]))
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": ValueError("boom")}}))
    with pytest.raises(UserError, match="numpy arrays"):
        load_backbone_weights(body.body, evil)


def test_a_checkpoint_of_another_backbone_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(2)}, path)
    with pytest.raises(UserError, match="no tensor"):
        load_backbone_weights(_body().body, path)


def test_skipped_rows_say_why():
    from sparseinst_cli.loading.checkpoint import LoadReport

    report = LoadReport(missing=["a"], unexpected=["b"],
                        mismatched=[("decoder.inst_branch.cls_score.weight", (80, 8), (3, 8))])
    rows = dict(skipped_rows(report))
    assert "another class count" in rows["decoder.inst_branch.cls_score.weight"]
    assert "keeps its initialisation" in rows["a"] and "ignored" in rows["b"]
