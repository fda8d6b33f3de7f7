"""Weight initialisations of the official release (detectron2's c2 fills)."""

from torch import nn


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2 'XavierFill': kaiming uniform with a=1, bias 0."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2 'MSRAFill': kaiming normal, fan_out, relu; bias 0."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)
