"""The DigitSum network: a small CNN for the digit and a learned head for the sum."""

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pixel statistics of the MNIST training set, in [0, 1]
NUM_DIGITS, NUM_SUMS = 10, 19  # digits 0-9; sums 0-18
DETECTOR_SEED = 20_251_203  # the non-digit detector's initial weights: apart from the digit network's seed


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DigitCNN(nn.Module):
    """(B, 1, 28, 28) normalised -> (B, 10) logits. Five 3x3 conv blocks, global average pool.

    `features` ends at the last conv block's (B, 4w, 7, 7) maps, which the non-digit detector reads too.
    """

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.width = width
        w = width
        self.features = nn.Sequential(
            conv_block(1, w),
            conv_block(w, w),
            nn.MaxPool2d(2),  # -> (B, w, 14, 14)
            conv_block(w, 2 * w),
            conv_block(2 * w, 2 * w),
            nn.MaxPool2d(2),  # -> (B, 2w, 7, 7)
            conv_block(2 * w, 4 * w),
        )
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(4 * w, NUM_DIGITS)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def describe(self) -> str:
        convs = sum(isinstance(m, nn.Conv2d) for m in self.modules())
        return f"{convs}x conv3x3 CNN, width {self.width}"

    def fold_batchnorm(self) -> None:
        """Fold each eval-mode BatchNorm into the conv before it, in place: same outputs, less work."""
        for block in self.features:
            if isinstance(block, nn.Sequential) and isinstance(block[1], nn.BatchNorm2d):
                conv, bn = block[0], block[1]
                assert isinstance(conv, nn.Conv2d)
                block[0] = fuse_conv_bn_eval(conv, bn)
                block[1] = nn.Identity()


class NondigitHead(nn.Module):
    """(B, C, 7, 7) feature maps of the digit CNN -> (B,) logit that the image is no digit at all.

    A 1x1 conv to `width` channels, then one linear layer over all 7x7 places: where the strokes are, not only
    which, so two digits side by side or a letter's parts can count. It reads the maps and never trains them.
    """

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.width = width
        self.mix = nn.Sequential(nn.Conv2d(channels, width, 1), nn.ReLU(inplace=True), nn.Flatten())
        self.score = nn.Linear(width * 7 * 7, 1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.score(self.mix(maps)).squeeze(1)

    def describe(self) -> str:
        return f"1x1 conv to {self.width} channels and a linear layer over the digit CNN's 7x7 feature maps"


class SumHead(nn.Module):
    """(digit probabilities (B, 10), numbers (B,)) -> sum logits (B, 19).

    The outer product of the digit distribution with the one-hot integer is a distribution over
    the 100 (digit, integer) pairs; one linear layer maps pairs to sums. Soft probabilities, not
    argmax, so the sum loss trains the CNN too; a confident digit makes the input one-hot, and a
    linear map of one-hot pairs can be exact for all 100 of them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.num_digits = NUM_DIGITS
        self.pairs_to_sum = nn.Linear(NUM_DIGITS * NUM_DIGITS, NUM_SUMS)

    def forward(self, digit_probs: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        number_one_hot = F.one_hot(numbers, self.num_digits).to(digit_probs.dtype)  # (B, 10)
        pairs = digit_probs.unsqueeze(2) * number_one_hot.unsqueeze(1)  # (B, 10, 10)
        return self.pairs_to_sum(pairs.flatten(1))  # (B, 19)

    def describe(self) -> str:
        return "linear over digit-probs x one-hot(number)"


class DigitSumNet(nn.Module):
    """forward(images (B,1,28,28) in [0,1], numbers (B,) int64) -> (digit log-probs (B,10), sum log-probs (B,19)).

    `answer` adds P(no digit) (B,) from the non-digit detector: a small head over the digit CNN's last feature maps,
    trained after the digit network, with those maps frozen (training/detector.py), to tell digits from letters,
    shapes and scribbles. It changes no weight of the digit network, so it can flag an answer but never change one.
    """

    mean: torch.Tensor  # buffers: travel with the module, so the service never normalises by itself
    std: torch.Tensor
    digit_temperature: torch.Tensor  # 1 while training; fitted on held-out training images afterwards
    sum_temperature: torch.Tensor

    def __init__(self, width: int = 24, detector_width: int = 32) -> None:
        super().__init__()
        self.width, self.detector_width = width, detector_width
        self.register_buffer("mean", torch.tensor(MNIST_MEAN))
        self.register_buffer("std", torch.tensor(MNIST_STD))
        self.register_buffer("digit_temperature", torch.tensor(1.0))
        self.register_buffer("sum_temperature", torch.tensor(1.0))
        self.digit = DigitCNN(width)
        self.sum = SumHead()
        with torch.random.fork_rng(devices=[]):  # its own seed: the digit network trains as it did without it
            torch.manual_seed(DETECTOR_SEED)
            self.detector = NondigitHead(4 * width, detector_width)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> the digit CNN's last (B, 4w, 7, 7) maps, which both heads read."""
        return self.digit.features((images - self.mean) / self.std)

    def logits(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncalibrated digit (B, 10) and sum (B, 19) logits; the sum head reads the uncalibrated digit softmax."""
        return self.logits_of(self.feature_maps(images), numbers)

    def logits_of(self, maps: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`logits` from the feature maps, which `answer` computes once for the digit and the non-digit heads."""
        digit_logits = self.digit.classifier(maps)
        return digit_logits, self.sum(F.softmax(digit_logits.float(), dim=1), numbers).float()

    def forward(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.calibrated(self.logits(images, numbers))

    def calibrated(self, logits: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of both heads. Temperatures rescale confidence only: each head's argmax, and so every
        answer, is unchanged."""
        digit_logits, sum_logits = logits
        return (
            F.log_softmax(digit_logits.float() / self.digit_temperature, dim=1),
            F.log_softmax(sum_logits / self.sum_temperature, dim=1),
        )

    @torch.jit.export
    def answer(self, images: torch.Tensor, numbers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward's two outputs and P(no digit) (B,) from the non-digit detector, in one call: the convolutions
        run once for both."""
        maps = self.feature_maps(images)
        digit_log_probs, sum_log_probs = self.calibrated(self.logits_of(maps, numbers))
        return digit_log_probs, sum_log_probs, torch.sigmoid(self.detector(maps).float())

    def nondigit_probability(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B,) the detector's probability that the image is no digit at all."""
        return torch.sigmoid(self.detector(self.feature_maps(images)).float())

    def model_args(self) -> dict[str, Any]:
        """The constructor's arguments: `DigitSumNet(**net.model_args())` rebuilds this architecture."""
        return {"width": self.width, "detector_width": self.detector_width}

    def describe(self) -> dict[str, Any]:
        """The architecture as the model card records it, from the network itself."""
        return {
            "name": type(self).__name__,
            "model_args": self.model_args(),
            "digit": self.digit.describe(),
            "sum": self.sum.describe(),
            "detector": self.detector.describe(),
            "parameters": parameter_count(self.digit) + parameter_count(self.sum),
            "detector_parameters": parameter_count(self.detector),
        }

    def inference_copy(self) -> "DigitSumNet":
        """A CPU copy in eval mode with batch norm folded into the convs, in the default memory layout (training
        may run channels-last; app/model.py picks the layout it serves in): what export and latency use."""
        model = copy.deepcopy(self).cpu().eval().to(memory_format=torch.contiguous_format)
        model.digit.fold_batchnorm()
        return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
