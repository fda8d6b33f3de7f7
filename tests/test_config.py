"""Configs: zoo names, inheritance, overrides, nearest-key errors, detectron2 YAML translation."""

from __future__ import annotations

import pytest

from sparseinst_cli.config import config_with_overrides, load_config, override_keys, zoo_names
from sparseinst_cli.errors import UserError

D2_BASE = """
MODEL:
  META_ARCHITECTURE: "SparseInst"
  BACKBONE: {FREEZE_AT: 0, NAME: "build_resnet_backbone"}
  RESNETS: {NORM: "FrozenBN", DEPTH: 50, OUT_FEATURES: ["res3", "res4", "res5"]}
  SPARSE_INST:
    DECODER: {NAME: "GroupIAMDecoder", NUM_CLASSES: 80}
SOLVER:
  IMS_PER_BATCH: 64
  BASE_LR: 0.00005
  STEPS: (210000, 250000)
  MAX_ITER: 270000
INPUT:
  MIN_SIZE_TRAIN: (416, 448, 480)
  MAX_SIZE_TRAIN: 853
  MIN_SIZE_TEST: 640
  FORMAT: "RGB"
VERSION: 2
"""


def test_zoo_names_and_yaml_suffix():
    assert {"r50_giam", "r50vd_dcn_giam_aug", "pvt_b1_giam", "cspdarknet53_giam"} <= set(
        zoo_names()
    )
    assert load_config("r50_giam.yaml") == load_config("r50_giam")


def test_inheritance_chain():
    cfg = load_config("r50vd_dcn_giam_aug")
    assert cfg.model.backbone.name == "resnet50d"
    assert cfg.model.backbone.dcn_stages == [4, 5]
    assert cfg.input.crop_enabled and cfg.input.min_size_test == 608
    assert cfg.solver.lr == 5e-5 and cfg.solver.steps == [210000, 250000]


def test_overrides_parse_yaml_values():
    cfg = load_config(
        "r50_giam", ["solver.lr=1e-4", "model.num_classes=3", "input.crop_enabled=true"]
    )
    assert cfg.solver.lr == 1e-4 and cfg.model.num_classes == 3 and cfg.input.crop_enabled is True


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["solver.lrr=1"], "did you mean 'solver.lr'"),
        (["model.num_clases=3"], "did you mean 'model.num_classes'"),
        (["solver.lr=fast"], "expects float"),
        (["solver.lr"], "KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, fragment):
    with pytest.raises(UserError, match=fragment):
        load_config("r50_giam", overrides)


def test_unknown_zoo_name_suggests_nearest():
    with pytest.raises(UserError, match="did you mean 'r50_giam'"):
        load_config("r50_gaim")


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {backbone: [unclosed\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(bad)


def test_own_yaml_with_base_relative_to_file(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {num_classes: 5}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nsolver: {lr: 0.001}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.model.num_classes == 5 and cfg.solver.lr == 0.001


def test_detectron2_yaml_translates(tmp_path):
    (tmp_path / "Base-SparseInst.yaml").write_text(D2_BASE)
    (tmp_path / "dcn.yaml").write_text(
        '_BASE_: "Base-SparseInst.yaml"\n'
        "MODEL:\n  RESNETS: {DEFORM_ON_PER_STAGE: [False, False, True, True]}\n"
        "  SPARSE_INST: {DECODER: {NAME: GroupIAMSoftDecoder, NUM_CLASSES: 3}}\n"
        "INPUT:\n  CROP:\n    ENABLED: True\n    TYPE: absolute_range\n    SIZE: (384, 600)\n"
    )
    cfg = load_config(tmp_path / "dcn.yaml")
    assert cfg.model.backbone.name == "resnet50" and cfg.model.backbone.dcn_stages == [4, 5]
    assert cfg.model.checkpoint_layout == "detectron2"
    assert cfg.model.decoder.kind == "giam_softmax" and cfg.model.num_classes == 3
    assert cfg.solver.steps == [210000, 250000] and cfg.solver.batch_size == 64
    assert cfg.input.min_size_train == [416, 448, 480] and cfg.input.crop_size == [384, 600]


def test_detectron2_yaml_rejects_unknown_keys_by_name(tmp_path):
    (tmp_path / "x.yaml").write_text(D2_BASE + "MODEL_EXTRA: 1\nSOLVER_X: {FOO: 2}\n")
    with pytest.raises(UserError, match="MODEL_EXTRA, SOLVER_X.FOO"):
        load_config(tmp_path / "x.yaml")


def test_a_renamed_key_in_a_stored_config_is_read_under_its_new_name():
    """Checkpoints written before `model.decoder.object_shape` was named stored
    `centre_prior_shape: oriented`; they load as `elongated`."""
    stored = load_config("small").to_dict()
    del stored["model"]["decoder"]["object_shape"]
    stored["model"]["decoder"]["centre_prior_shape"] = "oriented"
    assert config_with_overrides(stored).model.decoder.object_shape == "elongated"
    stored["model"]["decoder"]["centre_prior_shape"] = "round"
    assert config_with_overrides(stored).model.decoder.object_shape == "round"
    # on the command line too: the data's adaptation sees that the user chose the shape
    assert override_keys(["model.decoder.centre_prior_shape=round"]) == {
        "model.decoder.object_shape"}
