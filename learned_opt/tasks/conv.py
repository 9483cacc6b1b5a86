"""A small convolutional classifier for single- or multi-channel images.

With channels ``c_1..c_L`` (default ``(8, 16)``)::

    h_0 = x reshaped to (n, C, H, W)
    h_l = relu(conv2d(h_{l-1}, K_l, b_l, stride=2, padding=1))   K_l: (c_l, c_{l-1}, 3, 3)
    logits = mean_{spatial}(h_L) W^T + b                           W: (num_classes, c_L)

Each convolution halves the spatial size (28 -> 14 -> 7 for MNIST, 8 -> 4 -> 2
for the 8x8 digits), and the global average pool makes the head independent of
the image size. Parameters ``convs.<i>.weight``, ``convs.<i>.bias``,
``head.weight``, ``head.bias`` are initialised like ``nn.Conv2d`` / ``nn.Linear``:
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with ``fan_in = c_in * 3 * 3`` (conv) or
``c_L`` (head).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from baselines.checks import check_int

from .base import Params, uniform
from .datasets import Dataset
from .supervised import ClassificationTask

KERNEL = 3


class ConvTask(ClassificationTask):
    """Conv net on image data; see the module docstring.

    Args:
        dataset: an image dataset (``input_shape`` of the form ``(C, H, W)``):
            ``mnist5k``, ``mnist``, ``fashion_mnist`` or ``digits``.
        channels: output channels of the stride-2 3x3 convolutions.
        batch_size, device, dtype, root, name: see ``ClassificationTask``.
    """

    kind = "conv"

    def __init__(self, dataset: str | Dataset = "mnist5k", channels: Sequence[int] = (8, 16),
                 batch_size: int | None = 128, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str = torch.float32, root: str | None = None, name: str | None = None):
        if isinstance(channels, (int, str)) or len(channels) == 0:
            raise ValueError(f"channels must be a non-empty list of positive integers; got {channels!r}")
        self.channels = tuple(check_int(f"channels[{i}]", c, 1) for i, c in enumerate(channels))
        super().__init__(dataset, batch_size=batch_size, device=device, dtype=dtype, root=root, name=name)
        if len(self.dataset.input_shape) != 3:
            raise ValueError(f"conv needs image data with input_shape (channels, height, width); dataset "
                             f"{self.dataset.name!r} has input_shape {self.dataset.input_shape}")

    def init_params(self, generator: torch.Generator) -> Params:
        params = {}
        c_in = self.dataset.input_shape[0]
        for i, c_out in enumerate(self.channels):
            bound = 1.0 / math.sqrt(c_in * KERNEL * KERNEL)
            params[f"convs.{i}.weight"] = uniform((c_out, c_in, KERNEL, KERNEL), bound, generator,
                                                  self.dtype, self.device)
            params[f"convs.{i}.bias"] = uniform((c_out,), bound, generator, self.dtype, self.device)
            c_in = c_out
        bound = 1.0 / math.sqrt(c_in)
        params["head.weight"] = uniform((self.dataset.num_classes, c_in), bound, generator, self.dtype, self.device)
        params["head.bias"] = uniform((self.dataset.num_classes,), bound, generator, self.dtype, self.device)
        return params

    def logits(self, params: Params, x: Tensor) -> Tensor:
        h = x.reshape(-1, *self.dataset.input_shape)
        for i in range(len(self.channels)):
            h = torch.relu(F.conv2d(h, params[f"convs.{i}.weight"], params[f"convs.{i}.bias"],
                                    stride=2, padding=1))
        return F.linear(h.mean(dim=(2, 3)), params["head.weight"], params["head.bias"])
