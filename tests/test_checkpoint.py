"""Checkpoints: official key maps, strict-load errors, weights-only loading, atomic saves."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import official_state_dict

from sparseinst_cli.config import load_config
from sparseinst_cli.errors import UserError
from sparseinst_cli.loading.checkpoint import (
    atomic_save,
    load_weights,
    make_checkpoint,
    official_to_internal,
    read_checkpoint,
)
from sparseinst_cli.modeling import build_model
from sparseinst_cli.predictor import load_model


def test_detectron2_names_map_to_timm_resnet():
    state = {
        k: torch.zeros(1)
        for k in [
            "backbone.stem.conv1.weight",
            "backbone.stem.conv1.norm.running_var",
            "backbone.res2.0.shortcut.weight",
            "backbone.res2.0.shortcut.norm.bias",
            "backbone.res4.3.conv2.norm.weight",
            "backbone.res5.0.conv2_offset.bias",
            "backbone.res5.2.conv3.weight",
            "encoder.fusion.weight",
        ]
    }
    assert list(official_to_internal(state, "detectron2")) == [
        "backbone.body.conv1.weight",
        "backbone.body.bn1.running_var",
        "backbone.body.layer1.0.downsample.0.weight",
        "backbone.body.layer1.0.downsample.1.bias",
        "backbone.body.layer3.3.bn2.weight",
        "backbone.body.layer4.0.conv2.offset.bias",
        "backbone.body.layer4.2.conv3.weight",
        "encoder.fusion.weight",
    ]


def test_eighty_class_checkpoint_into_three_class_config_names_the_tensors():
    model = build_model(load_config("r50_giam", ["model.num_classes=3"]).model)
    with pytest.raises(UserError) as err:
        load_weights(model, {"model": official_state_dict("r50_giam")}, layout="detectron2")
    message = str(err.value)
    assert (
        "decoder.inst_branch.cls_score.weight checkpoint [80, 1024] vs model [3, 1024]" in message
    )
    assert "cls_score.bias" in message


def test_non_strict_load_reports_what_was_skipped():
    model = build_model(load_config("r50_giam", ["model.num_classes=3"]).model)
    report = load_weights(
        model, {"model": official_state_dict("r50_giam")}, layout="detectron2", strict=False
    )
    assert sorted(k for k, _, _ in report.mismatched) == [
        "decoder.inst_branch.cls_score.bias",
        "decoder.inst_branch.cls_score.weight",
    ]
    assert not report.missing and not report.unexpected


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "payload": Payload()}, path)
    with pytest.raises(UserError, match="weights-only"):
        read_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", pickle.dumps([1, 2])])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=str(path)):
        read_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pth")


def test_official_checkpoint_needs_a_config(r50_giam_official):
    with pytest.raises(UserError, match="--config"):
        load_model(r50_giam_official)


def test_our_checkpoint_rebuilds_from_weights_alone(tiny_checkpoint, tmp_path):
    loaded = load_model(tiny_checkpoint)
    assert loaded.class_names == ["circle", "square", "triangle"]
    assert loaded.category_ids == [1, 3, 7]
    assert loaded.config.model.backbone.name == "resnet18"
    # Round trip: save again and compare every tensor.
    again = tmp_path / "again.pth"
    atomic_save(
        make_checkpoint(
            loaded.model,
            config=loaded.config.to_dict(),
            class_names=loaded.class_names,
            category_ids=loaded.category_ids,
        ),
        again,
    )
    reloaded = load_model(again)
    for (k, a), (_, b) in zip(
        loaded.model.state_dict().items(), reloaded.model.state_dict().items()
    ):
        assert torch.equal(a, b), k
    assert not list(tmp_path.glob(".*tmp"))
