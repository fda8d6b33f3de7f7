"""The export's parity check itself (export/parity.py `compare`): rounding passes, a wrong graph
fails. Plain tensors stand in for the two models' raw outputs."""
from __future__ import annotations

import torch

from sparseinst_cli.export.parity import MASK_TOLERANCE, TOLERANCE, _mask_ious, compare
from sparseinst_cli.postprocess import resize_masks_thresholded
from sparseinst_cli.preprocess import ImageBatch

THRESHOLD = 0.45
LOW = (16, 16)  # mask cells, stride 4: a 64 x 64 picture
BATCH = ImageBatch(images=torch.zeros(1, 3, 64, 64), image_sizes=[(64, 64)],
                   orig_sizes=[(96, 96)])


def reference() -> dict[str, torch.Tensor]:
    """Three instances: blobs whose probabilities pass through the threshold at their edges, so
    some resized pixels lie within rounding of it."""
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centres = [(4.0, 4.0), (10.0, 6.0), (8.0, 12.0)]
    masks = torch.stack([torch.sigmoid(2.5 - ((xs - cx) ** 2 + (ys - cy) ** 2) / 2.5)
                         for cx, cy in centres])
    return {"scores": torch.tensor([[[0.9], [0.6], [0.3]]]), "masks": masks[None]}


def check(got: dict[str, torch.Tensor]):
    return compare(reference(), got, BATCH, cls_threshold=0.1, mask_threshold=THRESHOLD)


def test_rounding_within_the_mask_tolerance_passes_though_pixels_at_the_threshold_flip():
    ref = reference()
    # Move every probability by 0.8 of the tolerance, up near the threshold and down elsewhere.
    masks = ref["masks"]
    near = (masks - THRESHOLD).abs() < 0.05
    got = {"scores": ref["scores"] + 0.5 * TOLERANCE,
           "masks": torch.where(near, masks + 0.8 * MASK_TOLERANCE, masks - 0.8 * MASK_TOLERANCE)}
    geometry = dict(padded_hw=(64, 64), image_hw=(64, 64), orig_hw=(96, 96), threshold=THRESHOLD)
    a = resize_masks_thresholded(ref["masks"][0], **geometry)
    b = resize_masks_thresholded(got["masks"][0], **geometry)
    assert (a != b).any()  # pixels did flip: a plain IoU would count them
    row = check(got)
    assert row.instances == 3 and row.min_iou == 1.0 and row.passed, row
    assert TOLERANCE < row.mask_diff <= MASK_TOLERANCE


def test_a_mask_off_by_a_cell_or_probabilities_beyond_the_tolerance_fail():
    ref = reference()
    shifted = ref["masks"].clone()
    shifted[0, 1] = shifted[0, 1].roll(1, dims=-1)  # one instance's mask a cell to the right
    row = check({"scores": ref["scores"], "masks": shifted})
    assert not row.passed and row.min_iou < 0.9
    blurred = {"scores": ref["scores"], "masks": ref["masks"] * (1 - 3 * MASK_TOLERANCE)}
    row = check(blurred)
    assert not row.passed and row.mask_diff > MASK_TOLERANCE
    row = check({"scores": ref["scores"] + 2 * TOLERANCE, "masks": ref["masks"]})
    assert not row.passed and row.min_iou == 1.0


def test_mask_ious_count_empty_pairs_as_equal():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[1, :2] = True
    b[1, 1:3] = True
    torch.testing.assert_close(_mask_ious(a, b), torch.tensor([1.0, 4 / 12], dtype=torch.float64))
