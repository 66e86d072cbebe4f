"""PNG plots for the model card: learning curves of both heads and the digit confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _points(history: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the epochs that measured `key` (the test split is measured every few epochs)."""
    measured = [h for h in history if key in h]
    return [h["epoch"] for h in measured], [h[key] for h in measured]


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in [
        ("train_digit_loss", "digit, train"),
        ("train_sum_loss", "sum, train"),
        ("test_digit_loss", "digit, test"),
        ("test_sum_loss", "sum, test"),
    ]:
        loss_ax.plot(*_points(history, key), label=label, marker="." if key.startswith("test") else None)
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
    for key, label in [
        ("train_digit_acc", "digit, train"),
        ("train_sum_acc", "sum, train"),
        ("test_digit_acc", "digit, test"),
        ("test_sum_acc", "sum, test"),
    ]:
        at, values = _points(history, key)
        acc_ax.plot(at, [100 * v for v in values], label=label, marker="." if key.startswith("test") else None)
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="%", ylim=(90, 100))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (true, pred), count in np.ndenumerate(matrix):
        if count:
            color = "white" if true == pred else "black"
            ax.text(pred, true, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set(title=title, xlabel="predicted digit", ylabel="true digit", xticks=range(10), yticks=range(10))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
