"""The network describes itself and folds its own batch norm, so the card and the export need not know its layers."""

from __future__ import annotations

import torch
from torch import nn

from training.model import DigitCNN, DigitSumNet, SumHead


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
    description = DigitSumNet(width=16, detector_width=4).describe()
    assert description["model_args"] == {"width": 16, "detector_width": 4}
    assert description["digit"] == "5x conv3x3 CNN, width 16"
    assert description["detector"].startswith("1x1 conv to 4 channels")
    rebuilt = DigitSumNet(**description["model_args"])
    assert rebuilt.describe() == description
    total = description["parameters"] + description["detector_parameters"]
    assert total == sum(p.numel() for p in rebuilt.parameters())
    assert description["detector_parameters"] == sum(p.numel() for p in rebuilt.detector.parameters())


@torch.inference_mode()
def test_the_inference_copy_folds_batch_norm_with_the_same_outputs() -> None:
    model = trained_looking()
    copy = model.inference_copy()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in copy.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5  # untouched
    images, numbers = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 7, 9])
    for ours, theirs in zip(model.answer(images, numbers), copy.answer(images, numbers), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_the_detector_leaves_the_digit_networks_initial_weights_and_random_stream_as_they_were() -> None:
    """It draws its weights from a seed of its own, so a run trains the same digit network with or without it."""
    torch.manual_seed(0)
    model, after = DigitSumNet(8), torch.rand(5)
    torch.manual_seed(0)
    digit, total, after_without = DigitCNN(8), SumHead(), torch.rand(5)
    assert torch.equal(after, after_without)
    for ours, theirs in ((model.digit, digit), (model.sum, total)):
        pairs = zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)


@torch.inference_mode()
def test_answer_is_forward_plus_the_detectors_probability_also_when_scripted() -> None:
    model = trained_looking()
    scripted = torch.jit.script(model.inference_copy())
    images, numbers = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 7, 9])
    digit_lp, sum_lp, nondigit = scripted.answer(images, numbers)
    forward = model(images, numbers)
    torch.testing.assert_close(digit_lp, forward[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sum_lp, forward[1], atol=1e-5, rtol=1e-4)
    assert nondigit.shape == (4,) and bool(((nondigit > 0) & (nondigit < 1)).all())
    maps = model.digit.features((images - model.mean) / model.std)  # the digit CNN's own last maps
    torch.testing.assert_close(nondigit, torch.sigmoid(model.detector(maps)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(nondigit, model.nondigit_probability(images), atol=1e-5, rtol=1e-4)
