"""Loading a model: our checkpoint format and the official key map, pretrained backbone weights,
exported .onnx models, the COCO label map; `load_model` puts them together."""

from .model import LoadedModel, load_model, load_onnx_model

__all__ = ["LoadedModel", "load_model", "load_onnx_model"]
