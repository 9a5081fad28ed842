"""Host synchronisations of a Trainer step (issue 13): with deepalign's validation off, an
optimiser step reads nothing from the device, or exactly one tensor with log_every_step; an
epoch adds one read for its logged means.

There is no accelerator in the test suite, so the tensors the trainer moves to its device
become :class:`OnDevice`, a CPU tensor subclass that every op propagates and that counts the
calls which would wait for an accelerator (``item``, ``tolist``, ``bool``, ``int``,
``float``, ``numpy``, ``cpu``). Lengths and token ids stay on the host by design (the model
reads lengths there and trims token ids there) and are not counted.
"""

from __future__ import annotations

import traceback

import pytest
import torch

import deepalign
from deepalign import MSAConfig, MultiTaskMSA
from deepalign.data import make_synthetic
from deepalign.training import TrainConfig, Trainer

READS: list[tuple[str, str]] = []


class OnDevice(torch.Tensor):
    """A tensor standing for one on an accelerator: reading its values on the host counts."""

    def _read(self, what: str) -> None:
        READS.append((what, "".join(traceback.format_stack(limit=5)[:-2])))

    def item(self):
        self._read("item")
        return super().item()

    def tolist(self):
        self._read("tolist")
        return super().tolist()

    def __bool__(self):
        self._read("bool")
        return super().__bool__()

    def __int__(self):
        self._read("int")
        return super().__int__()

    def __float__(self):
        self._read("float")
        return super().__float__()

    def __index__(self):
        self._read("index")
        return super().__index__()

    def numpy(self, *args, **kwargs):
        self._read("numpy")
        return super().numpy(*args, **kwargs)

    def cpu(self, *args, **kwargs):
        self._read("cpu")
        return super().cpu(*args, **kwargs).as_subclass(torch.Tensor)


@pytest.fixture(scope="module")
def mosi_shapes():
    """MOSI's shapes: text features (50, 768), audio (375, 5), vision (500, 20); 64 samples."""
    splits = make_synthetic("mosi", n_train=64, seed=0)
    assert splits["train"].seq_lens == {"text": 50, "audio": 375, "vision": 500, "text_bert": 50}
    return splits


def counted_trainer(splits, *, log_every_step, max_epochs=2, model_config=None):
    """A trainer whose device tensors are OnDevice; reads grouped per optimiser step."""
    model_config = model_config or MSAConfig.preset("mosi", text_mode="features", alignment="V-A")
    torch.manual_seed(0)
    config = TrainConfig.preset("mosi", max_epochs=max_epochs)  # batch 16, k = 4: 1 step/epoch
    trainer = Trainer(MultiTaskMSA(model_config), splits, config, log_every_step=log_every_step)
    trainer.callbacks = (lambda record: None,)
    trainer._move = lambda x: x.as_subclass(OnDevice)
    trainer.ulgm.apply(lambda m: m._buffers.update(
        {k: v.as_subclass(OnDevice) for k, v in m._buffers.items() if v is not None}
    ))  # fmt: skip
    per_step, current = [], []
    train_step, step, step_record = trainer._train_step, trainer.optimizer.step, None

    def counting_train_step(*args, **kwargs):
        start = len(READS)
        result = train_step(*args, **kwargs)
        current.extend(READS[start:])
        return result

    def counting_step(*args, **kwargs):
        start = len(READS)
        result = step(*args, **kwargs)
        per_step.append([*current, *READS[start:]])
        current.clear()
        return result

    step_record = trainer._step_record

    def counting_step_record(*args, **kwargs):  # logged right after its step: counts there
        start = len(READS)
        result = step_record(*args, **kwargs)
        per_step[-1].extend(READS[start:])
        return result

    trainer._train_step = counting_train_step
    trainer.optimizer.step = counting_step
    trainer._step_record = counting_step_record
    return trainer, per_step


def describe(reads):
    return "\n".join(f"{what}:\n{where}" for what, where in reads)


@pytest.mark.parametrize("log_every_step", [False, True])
def test_an_optimizer_step_reads_at_most_the_logged_loss(mosi_shapes, log_every_step):
    READS.clear()
    trainer, per_step = counted_trainer(mosi_shapes, log_every_step=log_every_step)
    with deepalign.validation(False):
        trainer.fit()
    assert len(per_step) == 2  # 2 epochs of 4 batches, k = 4; epoch 2 generates labels
    for reads in per_step:
        assert len(reads) == int(log_every_step), describe(reads)
    assert all(what == "cpu" for reads in per_step for what, _ in reads)  # one copy of all terms


def test_with_validation_on_the_checks_read_and_are_counted(mosi_shapes):
    """The counter can fail: with validation on, the finiteness checks read the device."""
    READS.clear()
    trainer, per_step = counted_trainer(mosi_shapes, log_every_step=False, max_epochs=1)
    with deepalign.validation(True):
        trainer.fit()
    assert len(per_step) == 1
    assert len(per_step[0]) >= 4  # at least one per batch


def test_an_epoch_reads_its_logged_means_once(mosi_shapes):
    READS.clear()
    trainer, _ = counted_trainer(mosi_shapes, log_every_step=False)
    with deepalign.validation(False):
        trainer._train_epoch(1)
    assert [what for what, _ in READS] == ["cpu"], describe(READS)


@pytest.mark.parametrize("finetune", [True, False])
def test_steps_with_a_text_encoder_read_nothing(tmp_path, finetune):
    """Token ids stay on the host: the model trims them there (no read of the device) and the
    frozen encoder's cache is indexed on the device."""
    transformers = pytest.importorskip("transformers")
    tiny = transformers.BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    transformers.BertModel(tiny).save_pretrained(tmp_path)
    config = MSAConfig.preset(
        "mosi", text_encoder=str(tmp_path), finetune_text=finetune, alignment="T-V"
    )
    splits = make_synthetic("mosi", n_train=64, seq_len=8, text_dim=4, seed=0)
    READS.clear()
    trainer, per_step = counted_trainer(splits, log_every_step=False, model_config=config)
    assert trainer.use_text_cache == (not finetune)
    with deepalign.validation(False):
        trainer.fit()
    assert len(per_step) == 2
    for reads in per_step:
        assert reads == [], describe(reads)
