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


class _Recorder(torch.nn.Module):
    """A stand-in classifier that predicts label 1 for rows longer than 3 tokens and records the
    width of every batch it sees."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.widths = []

    def forward(self, input_ids, attention_mask, labels):
        self.widths.append(input_ids.shape[1])
        long = (attention_mask.sum(1) > 3).long()
        logits = torch.nn.functional.one_hot(long, 2).float() * 5
        return type("Out", (), {"logits": logits,
                                "loss": torch.nn.functional.cross_entropy(logits, labels)})()


def test_evaluation_batches_rows_by_length_and_scores_every_row_once():
    """Each batch pads to its own longest row: in length order the batches barely pad (central
    evaluation ran twice as fast on SST-2), and the metrics are those of every row."""
    from fedtune.data.batching import TokenizedDataset
    from fedtune.tasks.evaluation import evaluate

    lengths = [9, 2, 7, 1, 8, 3, 6, 2, 9, 1]
    ids = [[5] * n for n in lengths]
    labels = [int(n > 3) for n in lengths]
    labels[0] = 0  # one row (of length 9) is wrong
    model = _Recorder()
    metrics = evaluate(model, TokenizedDataset(ids, labels), 0, batch_size=4, num_labels=2)
    assert model.widths == [2, 8, 9]  # (1,1,2,2) (3,6,7,8) (9,9); unsorted: 9, 8, 9
    assert metrics["accuracy"] == pytest.approx(0.9)
    assert model.training  # restored
