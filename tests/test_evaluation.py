import pytest
import torch

from fedtune.tasks.evaluation import macro_f1


def test_macro_f1_matches_a_hand_computation():
    # rows = true label, columns = predicted label
    confusion = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 4]])
    f1 = []
    for k in range(3):
        tp = confusion[k, k].item()
        p = tp / confusion[:, k].sum().item()
        r = tp / confusion[k, :].sum().item()
        f1.append(2 * p * r / (p + r))
    assert macro_f1(confusion) == pytest.approx(sum(f1) / 3)


def test_macro_f1_of_a_missing_class_counts_as_zero():
    assert macro_f1(torch.tensor([[3, 0], [0, 0]])) == pytest.approx(0.5)
