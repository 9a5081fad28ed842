"""Gradient accumulation as MMSA 2.2.1's Self-MM does it (trains/multiTask/SELF_MM.py):
zero_grad at the first batch of each group of k, backward (of the plain, undivided loss) on
every batch, the ULGM update after every batch, optimizer.step after the k-th batch, and no
step for an incomplete trailing group."""

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from deepalign import ULGM, MSAConfig, MultiTaskMSA
from deepalign.data import collate, make_synthetic
from deepalign.training import TrainConfig, Trainer, parameter_groups

TEXT_DIM = 8


def make(n_train, batch_size, k, *, max_epochs=1, log_every_step=False):
    splits = make_synthetic("mosi", n_train=n_train, seq_len=5, text_dim=TEXT_DIM, seed=3)
    model_config = MSAConfig.preset(
        "mosi", text_mode="features", feature_dims=(TEXT_DIM, 5, 20), alignment="V-A"
    )
    config = TrainConfig.preset(
        "mosi", batch_size=batch_size, accumulate_grad_batches=k, max_epochs=max_epochs
    )
    torch.manual_seed(7)
    model = MultiTaskMSA(model_config)
    initial = copy.deepcopy(model.state_dict())
    trainer = Trainer(model, splits, config, seed=5, log_every_step=log_every_step)
    return trainer, splits, initial


@pytest.mark.parametrize(
    ("n_train", "batch_size", "k", "steps"),
    [
        (64, 8, 4, 2),  # 8 batches: two full groups
        (40, 8, 3, 1),  # 5 batches: one group, the trailing 2 batches are not stepped
        (64, 8, 1, 8),  # k = 1: a step per batch
        (72, 8, 4, 2),  # 9 batches: one trailing batch dropped
        (66, 8, 4, 2),  # 9 batches of which the last has 2 samples
    ],
)
def test_optimizer_steps_per_epoch(n_train, batch_size, k, steps):
    trainer, _, _ = make(n_train, batch_size, k, max_epochs=3)
    calls = []
    step = trainer.optimizer.step

    def counting_step(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    trainer.optimizer.step = counting_step
    per_epoch = []
    trainer.callbacks = (lambda record: per_epoch.append(len(calls)),)
    trainer.fit()
    assert per_epoch == [steps, 2 * steps, 3 * steps]
    assert trainer.state["step"] == 3 * steps


def reference_run(model, splits, config, *, seed, epochs):
    """A hand-written accumulation loop: per-batch gradients from torch.autograd.grad of the
    plain batch loss, summed by hand over each group of k, assigned to .grad, one Adam step; a
    trailing incomplete group's sum is discarded. Returns the parameters after each epoch and
    the summed gradients of every step."""
    params = [p for group in parameter_groups(model, config) for p in group["params"]]
    optimizer = torch.optim.Adam(parameter_groups(model, config))
    train = splits["train"]
    ulgm = ULGM(len(train), {"fusion": 128, "text": 32, "audio": 16, "vision": 32}, H=config.H)
    ulgm.init_labels(torch.arange(len(train)), train.labels["fusion"])
    k = config.accumulate_grad_batches
    snapshots, stepped = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = DataLoader(
            train, batch_size=config.batch_size, shuffle=True, generator=generator,
            collate_fn=collate,
        )  # fmt: skip
        summed = None
        for position, batch in enumerate(loader):
            out = model(
                batch["text"], batch["audio"], batch["audio_lengths"], batch["vision"],
                batch["vision_lengths"],
            )  # fmt: skip
            loss = ulgm.loss(out["predictions"], batch["index"]) + model.alignment_loss(out)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [
                torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
            ]
            if summed is not None:
                grads = [s + g for s, g in zip(summed, grads, strict=True)]
            summed = grads
            features = {name: value.detach() for name, value in out["post"].items()}
            ulgm.step(features, batch["index"], epoch)
            if position % k == k - 1:
                for p, g in zip(params, summed, strict=True):
                    p.grad = g
                stepped.append([g.clone() for g in summed])
                optimizer.step()
                summed = None
        snapshots.append(copy.deepcopy(model.state_dict()))
    return snapshots, stepped


@pytest.mark.parametrize(("n_train", "k"), [(40, 2), (64, 4)])
def test_parameters_equal_a_hand_written_accumulation_loop(n_train, k):
    """Two epochs (the ULGM's labels move in epoch 2), with 40 samples (5 batches, one
    trailing batch) and 64 (8 batches): the gradient of every optimiser step is the SUM of its
    k batch gradients (MMSA backpropagates the plain loss; a mean would be k times smaller,
    which Adam's scale invariance would nearly hide in the parameters), and the parameters
    after every epoch equal the hand-written loop's."""
    trainer, splits, initial = make(n_train, 8, k, max_epochs=2)
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    grads, got = [], []
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer.callbacks = (lambda record: got.append(copy.deepcopy(trainer.model.state_dict())),)
    torch.manual_seed(11)  # dropout masks: the same stream for both runs
    trainer.fit()
    reference_model = MultiTaskMSA(trainer.model.config)
    reference_model.load_state_dict(initial)
    torch.manual_seed(11)
    expected, expected_grads = reference_run(
        reference_model, splits, trainer.config, seed=5, epochs=2
    )
    assert len(grads) == len(expected_grads) == 2 * ((n_train // 8) // k)
    for step_grads, step_expected in zip(grads, expected_grads, strict=True):
        for g, e in zip(step_grads, step_expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    for epoch in range(2):
        for key, value in expected[epoch].items():
            torch.testing.assert_close(got[epoch][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(expected[0]["fusion_head.out.weight"], initial["fusion_head.out.weight"])


def test_fewer_batches_than_k_is_an_error():
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        make(24, 8, 4)  # 3 batches per epoch: the optimiser would never step


def test_step_records_average_their_batches():
    """With log_every_step, one record per optimiser step; 8 equal batches in groups of 2:
    the mean of the 4 step records' losses is the epoch's mean loss."""
    trainer, _, _ = make(64, 8, 2, log_every_step=True)
    records = []
    trainer.callbacks = (records.append,)
    trainer.fit()
    steps = [r for r in records if "step" in r]
    epochs = [r for r in records if "step" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["epoch"] == 1 for r in steps)
    assert len(epochs) == 1
    assert {k for k in steps[0] if k.startswith("train_")} == {
        k for k in epochs[0] if k.startswith("train_")
    }
    mean = sum(r["train_loss"] for r in steps) / 4
    assert mean == pytest.approx(epochs[0]["train_loss"], rel=1e-6)
