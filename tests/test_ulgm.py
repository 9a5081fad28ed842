"""Tests of deepalign.ULGM against hand-derived values and a plain re-scan reference."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepalign import ULGM
from deepalign.ulgm import MIN, LabelTrajectory

MOSI_DIMS = {"fusion": 6, "text": 3, "audio": 2, "vision": 4}


class RescanULGM:
    """The issue's definition, written plainly in float64 numpy: centres re-scan whole banks."""

    def __init__(self, num_samples, dims, *, fusion="fusion", H=3.0, exclude_zero=True):
        self.fusion, self.H, self.exclude_zero = fusion, H, exclude_zero
        self.labels = {m: np.zeros(num_samples) for m in dims}
        self.features = {m: np.zeros((num_samples, d)) for m, d in dims.items()}
        self.positive = {m: np.zeros(d) for m, d in dims.items()}
        self.negative = {m: np.zeros(d) for m, d in dims.items()}
        self.class_changes = 0

    def init_labels(self, indexes, labels):
        for m in self.labels:
            self.labels[m][indexes] = labels

    def offset(self, m, f):
        d_pos = np.sqrt(((f - self.positive[m]) ** 2).sum(axis=1))
        d_neg = np.sqrt(((f - self.negative[m]) ** 2).sum(axis=1))
        return (d_neg - d_pos) / (d_pos + MIN)

    def step(self, features, indexes, epoch):
        if epoch > 1:
            y_f = self.labels[self.fusion][indexes]
            delta_f = self.offset(self.fusion, features[self.fusion])
            for s in self.labels:
                if s == self.fusion:
                    continue
                delta_s = self.offset(s, features[s])
                y_hat = 0.5 * delta_s / (delta_f + MIN) * y_f + 0.5 * (y_f + delta_s - delta_f)
                y_hat = np.clip(y_hat, -self.H, self.H)
                old = self.labels[s][indexes]
                new = (epoch - 1) / (epoch + 1) * old + 2 / (epoch + 1) * y_hat
                self.class_changes += int((np.sign(old) != np.sign(new)).sum())
                self.labels[s][indexes] = new
        for m in self.labels:
            self.features[m][indexes] = features[m]
            y = self.labels[m]
            positive_rows = y >= 0 if not self.exclude_zero else y > 0
            if positive_rows.any():
                self.positive[m] = self.features[m][positive_rows].mean(axis=0)
            if (y < 0).any():
                self.negative[m] = self.features[m][y < 0].mean(axis=0)


def shuffled_batches(
    num_samples: int, batch_size: int, num_steps: int, generator: torch.Generator
) -> Iterator[tuple[int, torch.Tensor]]:
    """(epoch, indexes) like a shuffling DataLoader; epochs cycle 1..4 so labels keep moving."""
    step = 0
    for epoch_count in range(num_steps):
        order = torch.randperm(num_samples, generator=generator)
        for indexes in order.split(batch_size):
            if step == num_steps:
                return
            yield 1 + epoch_count % 4, indexes
            step += 1


def random_features(dims, batch_size, generator, dtype=torch.float64):
    return {
        m: torch.randn(batch_size, d, generator=generator, dtype=dtype) for m, d in dims.items()
    }


def random_labels(num_samples, generator):
    """Multiples of 0.5 in [-3, 3], so exact zeros occur."""
    return torch.randint(-6, 7, (num_samples,), generator=generator).double() / 2


def assert_matches_reference(ulgm: ULGM, reference: RescanULGM) -> None:
    for m in ulgm.names:
        np.testing.assert_allclose(
            ulgm.labels(m).numpy(), reference.labels[m], rtol=1e-5, atol=1e-9
        )
        positive, negative = ulgm.centers(m)
        np.testing.assert_allclose(positive.numpy(), reference.positive[m], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(negative.numpy(), reference.negative[m], rtol=1e-5, atol=1e-9)


def run_against_reference(num_samples, batch_size, num_steps, exclude_zero, seed) -> RescanULGM:
    generator = torch.Generator().manual_seed(seed)
    ulgm = ULGM(num_samples, MOSI_DIMS, exclude_zero=exclude_zero).to(torch.float64)
    reference = RescanULGM(num_samples, MOSI_DIMS, exclude_zero=exclude_zero)
    labels = random_labels(num_samples, generator)
    ulgm.init_labels(torch.arange(num_samples), labels)
    reference.init_labels(np.arange(num_samples), labels.numpy())
    for epoch, indexes in shuffled_batches(num_samples, batch_size, num_steps, generator):
        features = random_features(MOSI_DIMS, len(indexes), generator)
        ulgm.step(features, indexes, epoch)
        reference.step({m: f.numpy() for m, f in features.items()}, indexes.numpy(), epoch)
    assert_matches_reference(ulgm, reference)
    return reference


# --- hand-derived cases ---------------------------------------------------------------------


def one_dimensional_run(H: float = 3.0) -> ULGM:
    """Two samples, 1-D features, labels (1, -1); two steps of epoch 1, two of epoch 2."""
    ulgm = ULGM(2, {"fusion": 1, "text": 1}, H=H)
    ulgm.init_labels(torch.arange(2), torch.tensor([1.0, -1.0]))
    ulgm.step(
        {"fusion": torch.tensor([[2.0]]), "text": torch.tensor([[1.0]])}, torch.tensor([0]), 1
    )
    return ulgm


def step_one(ulgm: ULGM, index: int, fusion: float, text: float, epoch: int) -> None:
    features = {"fusion": torch.tensor([[fusion]]), "text": torch.tensor([[text]])}
    ulgm.step(features, torch.tensor([index]), epoch)


def assert_centers(ulgm: ULGM, name: str, positive: float, negative: float) -> None:
    got_positive, got_negative = ulgm.centers(name)
    assert got_positive.item() == pytest.approx(positive, abs=1e-6)
    assert got_negative.item() == pytest.approx(negative, abs=1e-6)


def test_epoch_one_centres_include_unvisited_zero_rows():
    ulgm = one_dimensional_run()
    # F_f = [2, 0]: sample 1 (label -1) is unvisited, so the negative centre is its zero row.
    assert_centers(ulgm, "fusion", 2.0, 0.0)
    assert_centers(ulgm, "text", 1.0, 0.0)
    step_one(ulgm, 1, fusion=-4.0, text=-1.0, epoch=1)
    assert_centers(ulgm, "fusion", 2.0, -4.0)
    assert_centers(ulgm, "text", 1.0, -1.0)
    assert ulgm.labels("text").tolist() == [1.0, -1.0]


def test_hand_derived_labels_in_epoch_two():
    ulgm = one_dimensional_run()
    step_one(ulgm, 1, fusion=-4.0, text=-1.0, epoch=1)
    # Sample 0, f_f = 1 against c_f = (2, -4): d+ = 1, d- = 5, delta_f = 4.
    # f_t = 0.5 against c_t = (1, -1): d+ = 0.5, d- = 1.5, delta_t = 2; alpha = 2 / 4 = 0.5.
    # y_hat = 0.5 * 0.5 * 1 + 0.5 * (1 + 2 - 4) = -0.25; y_t = 1/3 * 1 + 2/3 * (-0.25) = 1/6.
    step_one(ulgm, 0, fusion=1.0, text=0.5, epoch=2)
    assert ulgm.labels("text").tolist() == pytest.approx([1 / 6, -1.0], abs=1e-6)
    assert_centers(ulgm, "fusion", 1.0, -4.0)
    assert_centers(ulgm, "text", 0.5, -1.0)
    # Sample 1, f_f = -3 against (1, -4): d+ = 4, d- = 1, delta_f = -0.75.
    # f_t = 0.9 against (0.5, -1): d+ = 0.4, d- = 1.9, delta_t = 3.75; alpha = -5.
    # y_hat = 0.5 * (-5) * (-1) + 0.5 * (-1 + 3.75 + 0.75) = 4.25, clamped to H = 3;
    # y_t = 1/3 * (-1) + 2/3 * 3 = 5/3: the sample moves to the positive class.
    step_one(ulgm, 1, fusion=-3.0, text=0.9, epoch=2)
    assert ulgm.labels("text").tolist() == pytest.approx([1 / 6, 5 / 3], abs=1e-6)
    assert ulgm.labels("fusion").tolist() == [1.0, -1.0]
    assert_centers(ulgm, "fusion", 1.0, -3.0)
    # Text positive centre: mean(0.5, 0.9) = 0.7; its negative class is empty, keeps -1.
    assert_centers(ulgm, "text", 0.7, -1.0)


def test_hand_derived_clamp_to_smaller_bound():
    ulgm = one_dimensional_run(H=1.0)
    step_one(ulgm, 1, fusion=-4.0, text=-1.0, epoch=1)
    step_one(ulgm, 0, fusion=1.0, text=0.5, epoch=2)
    # As above, y_hat = 4.25 is clamped to H = 1: y_t = -1/3 + 2/3 = 1/3.
    step_one(ulgm, 1, fusion=-3.0, text=0.9, epoch=2)
    assert ulgm.labels("text")[1].item() == pytest.approx(1 / 3, abs=1e-6)


@pytest.mark.parametrize(
    ("exclude_zero", "fusion_positive", "audio_positive"),
    # Labels (2, 0, -1); samples 0 and 2 are visited. With exclude_zero=False the zero-labelled,
    # unvisited sample 1 joins the positive class: c+ = ((3, 0) + (0, 0)) / 2 and (1 + 0) / 2.
    [(True, [3.0, 0.0], 1.0), (False, [1.5, 0.0], 0.5)],
)
def test_zero_label_class_membership(exclude_zero, fusion_positive, audio_positive):
    ulgm = ULGM(3, {"fusion": 2, "audio": 1}, exclude_zero=exclude_zero)
    ulgm.init_labels(torch.arange(3), torch.tensor([2.0, 0.0, -1.0]))
    features = {
        "fusion": torch.tensor([[3.0, 0.0], [0.0, -3.0]]),
        "audio": torch.tensor([[1.0], [-2.0]]),
    }
    ulgm.step(features, torch.tensor([0, 2]), epoch=1)
    assert ulgm.centers("fusion")[0].tolist() == fusion_positive
    assert ulgm.centers("fusion")[1].tolist() == [0.0, -3.0]
    assert ulgm.centers("audio")[0].tolist() == [audio_positive]
    assert ulgm.centers("audio")[1].tolist() == [-2.0]


def test_loss_hand_values_and_gradients():
    ulgm = one_dimensional_run()
    step_one(ulgm, 1, fusion=-4.0, text=-1.0, epoch=1)
    step_one(ulgm, 0, fusion=1.0, text=0.5, epoch=2)
    step_one(ulgm, 1, fusion=-3.0, text=0.9, epoch=2)
    # Labels: fusion (1, -1), text (1/6, 5/3).
    fusion_prediction = torch.tensor([0.5, -0.5], requires_grad=True)
    text_prediction = torch.tensor([[0.0], [1.0]], requires_grad=True)
    total, terms = ulgm.loss(
        {"fusion": fusion_prediction, "text": text_prediction}, torch.arange(2), return_terms=True
    )
    w = [math.tanh(abs(1 / 6 - 1)), math.tanh(abs(5 / 3 + 1))]
    text_term = (w[0] * 1 / 6 + w[1] * 2 / 3) / 2
    assert terms["fusion"].item() == pytest.approx(0.5)
    assert terms["text"].item() == pytest.approx(text_term, rel=1e-5)
    assert total.item() == pytest.approx(0.5 + text_term, rel=1e-5)
    assert not terms["text"].requires_grad
    total.backward()
    # d/dp mean(w |p - y|) = w sign(p - y) / B, with the weights constant.
    assert fusion_prediction.grad.tolist() == pytest.approx([-0.5, 0.5])
    assert text_prediction.grad.flatten().tolist() == pytest.approx(
        [-w[0] / 2, -w[1] / 2], rel=1e-5
    )


def test_epoch_one_unimodal_labels_equal_fusion_and_loss_weights_are_zero():
    generator = torch.Generator().manual_seed(0)
    ulgm = ULGM(10, MOSI_DIMS)
    labels = random_labels(10, generator).float()
    ulgm.init_labels(torch.arange(10), labels)
    for _, indexes in shuffled_batches(10, 4, 3, generator):
        ulgm.step(random_features(MOSI_DIMS, len(indexes), generator, torch.float32), indexes, 1)
    for m in MOSI_DIMS:
        assert torch.equal(ulgm.labels(m), labels)
    predictions = {m: torch.randn(10, generator=generator, requires_grad=True) for m in MOSI_DIMS}
    total, terms = ulgm.loss(predictions, torch.arange(10), return_terms=True)
    total.backward()
    assert terms["fusion"].item() == pytest.approx(
        (predictions["fusion"] - labels).abs().mean().item()
    )
    for m in ("text", "audio", "vision"):
        assert terms[m].item() == 0.0
        assert torch.count_nonzero(predictions[m].grad) == 0


# --- incremental bookkeeping against the re-scan reference ----------------------------------


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_samples=st.integers(2, 12),
    batch_size=st.integers(1, 5),
    num_steps=st.integers(1, 40),
    exclude_zero=st.booleans(),
)
def test_incremental_matches_rescan(seed, num_samples, batch_size, num_steps, exclude_zero):
    run_against_reference(num_samples, batch_size, num_steps, exclude_zero, seed)


def test_incremental_matches_rescan_over_thousands_of_steps_with_class_changes():
    reference = run_against_reference(40, 8, 2000, exclude_zero=True, seed=7)
    assert reference.class_changes > 100


def test_init_labels_after_training_moves_rows_between_sums():
    generator = torch.Generator().manual_seed(3)
    ulgm = ULGM(8, MOSI_DIMS).to(torch.float64)
    reference = RescanULGM(8, MOSI_DIMS)
    for labels in (random_labels(8, generator), -random_labels(8, generator)):
        ulgm.init_labels(torch.arange(8), labels)
        reference.init_labels(np.arange(8), labels.numpy())
        for epoch, indexes in shuffled_batches(8, 3, 9, generator):
            features = random_features(MOSI_DIMS, len(indexes), generator)
            ulgm.step(features, indexes, epoch)
            reference.step({m: f.numpy() for m, f in features.items()}, indexes.numpy(), epoch)
    assert_matches_reference(ulgm, reference)


# --- reliability ----------------------------------------------------------------------------


def test_empty_class_stays_finite():
    generator = torch.Generator().manual_seed(1)
    ulgm = ULGM(6, MOSI_DIMS)
    ulgm.init_labels(torch.arange(6), torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5, 0.0]))
    for epoch, indexes in shuffled_batches(6, 4, 12, generator):
        ulgm.step(
            random_features(MOSI_DIMS, len(indexes), generator, torch.float32), indexes, epoch
        )
        for value in ulgm.state_dict().values():
            assert torch.isfinite(value.double()).all()
    # No fusion label is negative, so the fusion negative centre never had members.
    assert ulgm.centers("fusion")[1].tolist() == [0.0] * MOSI_DIMS["fusion"]
    predictions = {m: torch.zeros(6) for m in MOSI_DIMS}
    assert torch.isfinite(ulgm.loss(predictions, torch.arange(6)))


def test_zero_denominator_of_the_offset_ratio_stays_finite(monkeypatch):
    ulgm = ULGM(2, {"fusion": 1, "text": 1})
    ulgm.init_labels(torch.arange(2), torch.tensor([0.0, -1.0]))
    step_one(ulgm, 1, fusion=-1.0, text=-1.0, epoch=1)
    # delta_f = -MIN makes the published ratio delta_t / (delta_f + MIN) infinite; with the
    # fusion label 0 the published label would be inf * 0 = NaN.
    monkeypatch.setattr(
        ulgm.bank_fusion, "relative_distance", lambda f: torch.full((len(f),), -MIN)
    )
    step_one(ulgm, 0, fusion=0.5, text=1.0, epoch=2)
    assert torch.isfinite(ulgm.labels("text")).all()


def test_checkpoint_round_trip_continues_bit_identically():
    generator = torch.Generator().manual_seed(5)
    labels = random_labels(12, generator).float()
    batches = [
        (epoch, indexes, random_features(MOSI_DIMS, len(indexes), generator, torch.float32))
        for epoch, indexes in shuffled_batches(12, 5, 30, generator)
    ]

    def fresh() -> ULGM:
        ulgm = ULGM(12, MOSI_DIMS)
        ulgm.init_labels(torch.arange(12), labels)
        return ulgm

    def train(ulgm: ULGM, part) -> None:
        for epoch, indexes, features in part:
            ulgm.step(features, indexes, epoch)

    uninterrupted = fresh()
    train(uninterrupted, batches)
    interrupted = fresh()
    train(interrupted, batches[:13])
    buffer = io.BytesIO()
    torch.save(interrupted.state_dict(), buffer)
    buffer.seek(0)
    resumed = ULGM(12, MOSI_DIMS)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    train(resumed, batches[13:])
    expected = uninterrupted.state_dict()
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_failed_step_leaves_state_unchanged():
    ulgm = ULGM(4, MOSI_DIMS)
    ulgm.init_labels(torch.arange(4), torch.tensor([1.0, -1.0, 2.0, -2.0]))
    before = {key: value.clone() for key, value in ulgm.state_dict().items()}
    features = random_features(MOSI_DIMS, 2, torch.Generator().manual_seed(0), torch.float32)
    features["vision"][1, 0] = float("nan")
    with pytest.raises(ValueError, match="vision"):
        ulgm.step(features, torch.tensor([0, 1]), 2)
    for key, value in ulgm.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_labels_and_centers_are_copies():
    ulgm = ULGM(3, {"fusion": 2, "text": 1})
    ulgm.init_labels(torch.arange(3), torch.tensor([1.0, -1.0, 2.0]))
    ulgm.labels("text").fill_(7.0)
    ulgm.centers("fusion")[0].fill_(7.0)
    assert ulgm.labels("text").tolist() == [1.0, -1.0, 2.0]
    assert ulgm.centers("fusion")[0].tolist() == [0.0, 0.0]


def test_buffers_follow_dtype_and_running_sums_stay_float64():
    ulgm = ULGM(4, {"fusion": 2, "text": 1})
    ulgm.init_labels(torch.arange(4), torch.tensor([1.0, -1.0, 2.0, -2.0]))
    ulgm.step({"fusion": torch.randn(2, 2), "text": torch.randn(2, 1)}, torch.tensor([0, 1]), 1)
    sums = ulgm.bank_fusion.positive.total.clone()
    ulgm.to(torch.float64)
    assert ulgm.labels("text").dtype == torch.float64
    assert ulgm.centers("fusion")[0].dtype == torch.float64
    ulgm.half()
    assert ulgm.labels("text").dtype == torch.float16
    assert torch.equal(ulgm.bank_fusion.positive.total, sums)
    ulgm.step({"fusion": torch.randn(2, 2), "text": torch.randn(2, 1)}, torch.tensor([2, 3]), 2)
    assert torch.isfinite(ulgm.labels("text")).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_buffers_follow_device():
    ulgm = ULGM(4, {"fusion": 2, "text": 1}).cuda()
    ulgm.init_labels(torch.arange(4), torch.tensor([1.0, -1.0, 2.0, -2.0], device="cuda"))
    features = {
        "fusion": torch.randn(2, 2, device="cuda"),
        "text": torch.randn(2, 1, device="cuda"),
    }
    ulgm.step(features, torch.tensor([0, 1]), 2)
    assert ulgm.labels("text").device.type == "cuda"
    assert ulgm.bank_text.positive.total.dtype == torch.float64
    with pytest.raises(ValueError, match="device"):
        ulgm.step({m: f.cpu() for m, f in features.items()}, torch.tensor([0, 1]), 2)


def test_state_dict_loads_with_weights_only():
    ulgm = ULGM(3, {"fusion": 2, "text": 1})
    ulgm.init_labels(torch.arange(3), torch.tensor([1.0, -1.0, 2.0]))
    buffer = io.BytesIO()
    torch.save(ulgm.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["bank_text.labels"].tolist() == [1.0, -1.0, 2.0]


# --- errors ---------------------------------------------------------------------------------


@pytest.fixture
def trained() -> ULGM:
    ulgm = ULGM(5, {"fusion": 2, "text": 1})
    ulgm.init_labels(torch.arange(5), torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5]))
    return ulgm


def batch(fusion_rows: int = 2, text_width: int = 1) -> dict[str, torch.Tensor]:
    return {"fusion": torch.zeros(fusion_rows, 2), "text": torch.zeros(2, text_width)}


@pytest.mark.parametrize(
    ("features", "indexes", "epoch", "error", "match"),
    [
        (batch(), torch.tensor([1, 1]), 1, ValueError, r"indexes: expected distinct.*\[1\]"),
        (batch(), torch.tensor([0, 5]), 1, ValueError, r"indexes: expected indexes in \[0, 5\)"),
        (batch(), torch.tensor([-1, 0]), 1, ValueError, r"indexes: .*from -1 to 0"),
        (batch(), torch.tensor([0.0, 1.0]), 1, TypeError, "indexes: expected an integer tensor"),
        (batch(), [0, 1], 1, TypeError, "indexes: expected a torch.Tensor"),
        (batch(), torch.tensor([0, 1]), 0, ValueError, "epoch: expected an int >= 1, got 0"),
        (batch(), torch.tensor([0, 1]), 1.0, TypeError, "epoch: expected an int, got float"),
        (batch(3), torch.tensor([0, 1]), 1, ValueError, r"features\['fusion'\]: expected shape"),
        (batch(2, 3), torch.tensor([0, 1]), 1, ValueError, r"features\['text'\].*\(2, 3\)"),
        ({"fusion": torch.zeros(2, 2)}, torch.tensor([0, 1]), 1, ValueError, r"missing \['text'\]"),
        (
            {**batch(), "audio": torch.zeros(2, 1)},
            torch.tensor([0, 1]),
            1,
            ValueError,
            r"unexpected \['audio'\]",
        ),
        (
            {"fusion": torch.zeros(2, 2, dtype=torch.long), "text": torch.zeros(2, 1)},
            torch.tensor([0, 1]),
            1,
            TypeError,
            r"features\['fusion'\]: expected a floating-point tensor",
        ),
        ([torch.zeros(2, 2)], torch.tensor([0, 1]), 1, TypeError, "features: expected a mapping"),
    ],
)
def test_step_rejects_bad_inputs(trained, features, indexes, epoch, error, match):
    with pytest.raises(error, match=match):
        trained.step(features, indexes, epoch)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_step_rejects_non_finite_features(trained, bad):
    features = batch()
    features["text"][0, 0] = bad
    with pytest.raises(ValueError, match=r"features\['text'\]: expected finite values"):
        trained.step(features, torch.tensor([0, 1]), 1)


def test_step_before_init_labels_is_an_error():
    ulgm = ULGM(5, {"fusion": 2, "text": 1})
    ulgm.init_labels(torch.tensor([0, 1]), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"call init_labels.*first"):
        ulgm.step(batch(), torch.tensor([1, 3]), 1)
    with pytest.raises(ValueError, match=r"e\.g\. \[3\]"):
        ulgm.loss({"fusion": torch.zeros(2), "text": torch.zeros(2)}, torch.tensor([1, 3]))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 0}, ValueError, "num_samples: expected an int >= 1, got 0"),
        ({"num_samples": 2.0}, TypeError, "num_samples: expected an int"),
        ({"dims": [2, 1]}, TypeError, "dims: expected a mapping"),
        ({"dims": {"fusion": 2}}, ValueError, "at least one unimodal"),
        ({"dims": {"fusion": 2, "text": 0}}, ValueError, r"dims\['text'\]: expected an int >= 1"),
        ({"dims": {"fusion": 2, "a.b": 1}}, ValueError, "without '.', got 'a.b'"),
        ({"fusion": "multimodal"}, ValueError, "fusion: expected one of the names"),
        ({"H": 0.0}, ValueError, "H: expected a finite value > 0, got 0.0"),
        ({"H": "3"}, TypeError, "H: expected a float, got str"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    arguments = {"num_samples": 4, "dims": {"fusion": 2, "text": 1}, **kwargs}
    with pytest.raises(error, match=match):
        ULGM(arguments.pop("num_samples"), arguments.pop("dims"), **arguments)


def test_loss_and_init_labels_reject_bad_inputs(trained):
    with pytest.raises(ValueError, match=r"predictions\['text'\]: expected shape \(2, 1\)"):
        trained.loss({"fusion": torch.zeros(2), "text": torch.zeros(2, 2)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"predictions: expected the keys"):
        trained.loss({"fusion": torch.zeros(2)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels: expected finite values"):
        trained.init_labels(torch.tensor([0]), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\), got \(3,\)"):
        trained.init_labels(torch.tensor([0, 1]), torch.zeros(3))
    with pytest.raises(ValueError, match="name: expected one of"):
        trained.labels("audio")


# --- trajectories ---------------------------------------------------------------------------


def test_trajectory_records_copies_per_epoch():
    generator = torch.Generator().manual_seed(2)
    ulgm = ULGM(6, MOSI_DIMS)
    ulgm.init_labels(torch.arange(6), random_labels(6, generator).float())
    trajectory = LabelTrajectory()
    expected = []
    for epoch in (1, 2, 3):
        for _, indexes in shuffled_batches(6, 3, 2, generator):
            features = random_features(MOSI_DIMS, len(indexes), generator, torch.float32)
            ulgm.step(features, indexes, epoch)
        trajectory.record(ulgm, epoch)
        expected.append(ulgm.labels("audio"))
    assert trajectory.epochs == [1, 2, 3]
    assert torch.equal(trajectory.labels("audio"), torch.stack(expected))
    with pytest.raises(ValueError, match="epoch: expected an int >= 1"):
        trajectory.record(ulgm, 0)
    with pytest.raises(ValueError, match=r"ulgm: expected the recorded modalities"):
        trajectory.record(ULGM(6, {"fusion": 2, "text": 1}), 4)


def test_trajectory_plot_draws_one_panel_per_unimodal_modality():
    pytest.importorskip("matplotlib")
    ulgm = ULGM(6, MOSI_DIMS)
    ulgm.init_labels(torch.arange(6), random_labels(6, torch.Generator().manual_seed(4)).float())
    trajectory = LabelTrajectory()
    with pytest.raises(ValueError, match="call record first"):
        trajectory.plot()
    trajectory.record(ulgm, 1)
    trajectory.record(ulgm, 2)
    figure = trajectory.plot(epochs=[2])
    assert [axis.get_title() for axis in figure.axes] == [
        "text labels",
        "audio labels",
        "vision labels",
    ]
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == [
        "multimodal",
        "epoch 2",
    ]
    with pytest.raises(ValueError, match=r"epochs: expected a non-empty subset of \[1, 2\]"):
        trajectory.plot(epochs=[5])
    degenerate = LabelTrajectory()
    degenerate.record(ULGM(6, MOSI_DIMS), 1)  # every label 0: an empty histogram range
    assert len(degenerate.plot().axes) == 3


def test_one_dimensional_shapes_print_as_tuples(trained):
    """Issue 19: a 1-D expected shape reads ``(2,)`` like the found one, not ``(2)``."""
    with pytest.raises(ValueError, match=r"^labels: expected shape \(2,\), got \(3,\)$"):
        trained.init_labels(torch.tensor([0, 1]), torch.zeros(3))
    with pytest.raises(ValueError, match=r"expected a 1-D tensor of shape \(B,\), got a 2-D"):
        trained.init_labels(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2))
