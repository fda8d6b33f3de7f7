"""The COCO evaluator: pycocotools mask AP -> a plain dict."""

from .mask_ap import STAT_KEYS, evaluate_segm, instances_to_coco_results

__all__ = ["STAT_KEYS", "evaluate_segm", "instances_to_coco_results"]
