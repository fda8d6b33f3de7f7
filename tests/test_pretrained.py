"""ImageNet backbone weights by name, from a planted Hugging Face cache (nothing downloads)."""
from __future__ import annotations

import pytest
import timm
import torch
from cli_support import run_cli_process
from safetensors.torch import save_file
from train_support import TINY, Recorder, make_dataset, train

from sparseinst_cli.errors import RunError, UserError
from sparseinst_cli.loading.pretrained import resolve_backbone_weights
from sparseinst_cli.modeling.backbone import TimmBackbone
from sparseinst_cli.training.weights import load_backbone_weights

TAG = "resnet18.a1_in1k"
REVISION = "0" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The hub cache layout with resnet18.a1_in1k in it; offline, so only the cache answers."""
    cache = tmp_path / "hub"
    repo = cache / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    torch.manual_seed(1)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return state


def test_a_tag_loads_from_the_cache_into_the_backbone(hub_cache):
    path = resolve_backbone_weights(TAG, None)
    body = TimmBackbone(name="resnet18", norm="bn").body
    load_backbone_weights(body, path)
    torch.testing.assert_close(body.state_dict()["conv1.weight"], hub_cache["conv1.weight"])
    assert resolve_backbone_weights("imagenet", TAG) == path


def test_missing_weights_and_unknown_tags_are_one_line_errors(hub_cache):
    with pytest.raises(RunError, match="cannot get ImageNet weights 'resnet34.a1_in1k'.*"
                                        "--backbone-weights FILE") as err:
        resolve_backbone_weights("resnet34.a1_in1k", None)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="not a timm pretrained tag"):
        resolve_backbone_weights("resnet18.nope", None)
    with pytest.raises(UserError, match="names no pretrained tag"):
        resolve_backbone_weights("imagenet", None)
    with pytest.raises(UserError, match="file not found"):
        resolve_backbone_weights("missing/resnet18.pth", None)


def test_train_takes_imagenet_by_the_config_tag(hub_cache, tmp_path):
    data = make_dataset(tmp_path / "data")
    base = [o for o in TINY if not o.startswith("model.backbone")]
    rec = Recorder()
    summary = train(data, tmp_path, base=(*base, "model.backbone.name=resnet18",
                                          f"model.backbone.pretrained={TAG}",
                                          "solver.max_iter=1", "solver.steps=[]"),
                    backbone_weights="imagenet", recorder=rec)
    assert summary.status == "finished"
    with pytest.raises(RunError, match="cannot get ImageNet weights"):
        train(data, tmp_path, base=(*base, "model.backbone.name=resnet18"),
              backbone_weights="resnet34.a1_in1k")


def test_cli_says_one_line_and_exits_1_when_offline(hub_cache, tmp_path):
    data = make_dataset(tmp_path / "data")
    out = run_cli_process("train", "--config", "demo", "--data", data, "--iters", 1,
                          "--project", tmp_path, "--backbone-weights", "resnet34.a1_in1k")
    assert out.returncode == 1, out.stderr
    error = out.stderr.strip().splitlines()[-1]  # after the run's notices
    assert error.startswith("error: cannot get ImageNet weights")
    assert "--backbone-weights FILE" in error
    assert "Traceback" not in out.stderr
