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


def test_macro_f1_counts_a_label_never_predicted_as_zero():
    # label 1 occurs twice and is never predicted: F1 0; label 0: p = 3/5, r = 1
    assert macro_f1(torch.tensor([[3, 0], [2, 0]])) == pytest.approx((2 * 0.6 / 1.6 + 0) / 2)


def test_macro_f1_leaves_out_labels_absent_from_rows_and_predictions():
    # as scikit-learn's macro average: label 2 neither occurs nor is predicted (TREC-50's test
    # split lacks 8 of its 50 labels)
    confusion = torch.tensor([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    with_two = macro_f1(confusion[:2, :2])
    assert macro_f1(confusion) == pytest.approx(with_two)
    assert macro_f1(torch.zeros(3, 3, dtype=torch.long)) == 0.0
