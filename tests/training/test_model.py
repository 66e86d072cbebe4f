"""The network describes itself and folds its own batch norm, so the card and the export need not know its layers."""

from __future__ import annotations

import torch
from torch import nn

from training.model import DigitSumNet


def trained_looking(width: int = 8) -> DigitSumNet:
    """A small net whose batch norms hold non-trivial statistics, as after training."""
    torch.manual_seed(0)
    model = DigitSumNet(width)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_the_description_rebuilds_the_architecture() -> None:
    description = DigitSumNet(width=16).describe()
    assert description["model_args"] == {"width": 16}
    assert description["digit"] == "5x conv3x3 CNN, width 16"
    rebuilt = DigitSumNet(**description["model_args"])
    assert rebuilt.describe() == description
    assert description["parameters"] == sum(p.numel() for p in rebuilt.parameters())


@torch.inference_mode()
def test_the_inference_copy_folds_batch_norm_with_the_same_outputs() -> None:
    model = trained_looking()
    copy = model.inference_copy()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5  # the original is untouched
    images, numbers = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 7, 9])
    for ours, theirs in zip(model(images, numbers), copy(images, numbers), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
