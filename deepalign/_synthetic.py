"""Synthetic MSA data in the MMSA pickle layout, with planted, knob-controlled structure.

The generative model (latent units; every latent is an independent standard normal per sample):

- sentiment ``z_s`` and a shared audio-visual latent ``z_av`` make the multimodal target
  ``y_M = (z_s + w z_av) / sqrt(1 + w^2)`` (``w = shared_weight``);
- unimodal targets ``y_m = y_M + delta * eps_m`` (``delta = unimodal_offset``), the offset
  ``eps_m`` being carried by modality ``m`` only;
- modality ``m`` sees a noisy copy of the sentiment, ``c_m = r_m z_s + sqrt(1 - r_m^2) eta_m``
  (``r_m = {text,audio,vision}_signal``);
- audio carries ``z_av + k u`` and vision ``z_av - k u`` (``k = shared_mask``): either alone
  is masked by ``u``, their sum is exact;
- each modality has a private nuisance ``nuisance * n_m`` unrelated to any label.

Each modality's code vector is mapped by a fixed random matrix to its feature width and
repeated over its valid time steps with white noise (``frame_noise``); padding is 0. Token
ids carry the text's sentiment through a graded lexicon of sentiment words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepalign._checks import check_choice, check_in_range, check_positive_int

LABEL_KEYS = {
    "fusion": "regression_labels",
    "text": "regression_labels_T",
    "audio": "regression_labels_A",
    "vision": "regression_labels_V",
}
"""Label name -> key of the MMSA pickle (the one table; :mod:`deepalign.data` re-exports it)."""

CLS_ID, SEP_ID, PAD_ID, VOCAB_SIZE = 101, 102, 0, 30522
LEXICON_START, LEXICON_WORDS_PER_GRADE, GRADES = 1000, 16, 3
NEUTRAL_START = 2000
SENTIMENT_TOKEN_RATE = 0.3
GRADE_NOISE = 0.5
MODALITIES = ("text", "audio", "vision")
# Projection matrices and the lexicon are fixed, so different seeds sample one distribution.
_STRUCTURE_SEED = 0x5E17


@dataclass(frozen=True)
class Preset:
    """Layout of a real dataset's MMSA pickle that the synthetic data copies.

    Attributes:
        splits: train/valid/test sizes of the real file.
        text_len: token sequence length ``L`` of ``text_bert`` (and of ``text``).
        text_dim: text feature width.
        audio: ``(T_a, d_a)``.
        vision: ``(T_v, d_v)``.
        label_limit: labels lie in ``[-label_limit, label_limit]``.
        label_scale: label units per latent standard deviation.
        label_step: labels are multiples of this (annotator averages).
        unimodal_labels: whether the real file has ``regression_labels_T/A/V``.
    """

    splits: tuple[int, int, int]
    text_len: int
    text_dim: int
    audio: tuple[int, int]
    vision: tuple[int, int]
    label_limit: float
    label_scale: float
    label_step: float
    unimodal_labels: bool


PRESETS = {
    "mosi": Preset((1284, 229, 686), 50, 768, (375, 5), (500, 20), 3.0, 1.5, 0.2, False),
    "mosei": Preset((16326, 1871, 4659), 50, 768, (500, 74), (500, 35), 3.0, 1.2, 1 / 3, False),
    "sims": Preset((1368, 456, 457), 39, 768, (400, 33), (55, 709), 1.0, 0.5, 0.2, True),
}


def synthetic_mmsa_dict(
    preset: str = "mosi",
    *,
    n_train: int | None = None,
    seed: int = 0,
    seq_len: int | None = None,
    text_dim: int | None = None,
    unimodal_labels: bool | None = None,
    text_signal: float = 0.8,
    audio_signal: float = 0.3,
    vision_signal: float = 0.3,
    shared_weight: float = 0.6,
    shared_mask: float = 1.5,
    nuisance: float = 1.0,
    unimodal_offset: float = 0.4,
    frame_noise: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """The raw dict of a synthetic MMSA pickle (``pickle.dump`` it to get a loadable file).

    The generative model is described in :doc:`/data`; every knob below is in latent units.

    .. math::

        y_M = \\frac{z_s + w\\, z_{av}}{\\sqrt{1 + w^2}}, \\qquad
        y_m = y_M + \\delta\\, \\epsilon_m, \\qquad
        \\text{label} = \\operatorname{clip}\\big(q \\operatorname{round}(s\\, y / q),\\,
        -\\text{limit}, \\text{limit}\\big)

    Shape:
        Per split of ``N`` samples: ``text_bert`` ``(N, 3, L)`` int64, ``text`` ``(N, L, d_t)``,
        ``audio`` ``(N, T_a, d_a)``, ``vision`` ``(N, T_v, d_v)`` float32, lengths and labels
        ``(N,)``.

    Args:
        preset: ``"mosi"``, ``"mosei"`` or ``"sims"`` (see :data:`PRESETS`).
        n_train: train size; valid/test keep the preset's proportions (at least 1 each).
            Default: the real train size.
        seed: random seed of the samples (the projections and lexicon are fixed).
        seq_len: if given, ``L``, ``T_a`` and ``T_v`` all take this value (at least 3).
        text_dim: text feature width; default the preset's (768).
        unimodal_labels: add ``regression_labels_T/A/V``; default: only for ``"sims"``.
        text_signal: correlation ``r_T`` of the text's sentiment copy with ``z_s``, in [0, 1].
        audio_signal: the same for audio, ``r_A``.
        vision_signal: the same for vision, ``r_V``.
        shared_weight: weight ``w >= 0`` of the audio-visual latent in the label.
        shared_mask: ``k >= 0``, how strongly each of audio and vision alone hides ``z_av``.
        nuisance: standard deviation of each modality's private nuisance.
        unimodal_offset: ``delta >= 0``, the spread of the unimodal labels around ``y_M``.
        frame_noise: standard deviation of the per-time-step noise.

    Returns:
        ``{"train": {...}, "valid": {...}, "test": {...}}`` with the MMSA keys ``id``,
        ``raw_text``, ``text``, ``text_bert``, ``audio``, ``vision``, ``audio_lengths``,
        ``vision_lengths``, ``regression_labels``, ``classification_labels`` (0 negative,
        1 zero, 2 positive) and optionally ``regression_labels_T/A/V``.

    Raises:
        ValueError: if ``preset`` is unknown or a knob is out of range.
        TypeError: if a size or knob has the wrong type.

    Example:
        >>> raw = synthetic_mmsa_dict("mosi", n_train=4, seq_len=6, text_dim=3, seed=0)
        >>> sorted(raw)
        ['test', 'train', 'valid']
        >>> raw["train"]["text_bert"].shape, raw["train"]["audio"].shape
        ((4, 3, 6), (4, 6, 5))
        >>> raw["train"]["text_bert"][:, 0, 0].tolist()  # every sequence starts with [CLS]
        [101, 101, 101, 101]
    """
    spec = PRESETS[check_choice(preset, "preset", list(PRESETS))]
    sizes = _split_sizes(spec.splits, n_train)
    lengths = _sequence_shapes(spec, seq_len, text_dim)
    knobs = {
        "text_signal": check_in_range(text_signal, "text_signal", 0.0, 1.0),
        "audio_signal": check_in_range(audio_signal, "audio_signal", 0.0, 1.0),
        "vision_signal": check_in_range(vision_signal, "vision_signal", 0.0, 1.0),
        "shared_weight": check_in_range(shared_weight, "shared_weight", 0.0),
        "shared_mask": check_in_range(shared_mask, "shared_mask", 0.0),
        "nuisance": check_in_range(nuisance, "nuisance", 0.0),
        "unimodal_offset": check_in_range(unimodal_offset, "unimodal_offset", 0.0),
    }
    frame_noise = check_in_range(frame_noise, "frame_noise", 0.0)
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    latent = _latents(rng, n, knobs)
    text_bert, text_lengths = _token_ids(rng, latent["text_view"], lengths["text"][0])
    seq_lengths = {"text": text_lengths} | {
        m: rng.integers(max(1, lengths[m][0] // 4), lengths[m][0] + 1, n)
        for m in ("audio", "vision")
    }
    columns: dict[str, Any] = {"text_bert": text_bert}
    for modality, (steps, width) in lengths.items():
        code = latent[f"{modality}_code"]
        columns[modality] = _sequences(rng, code, seq_lengths[modality], steps, width, frame_noise)
    columns["audio_lengths"], columns["vision_lengths"] = (
        seq_lengths["audio"],
        seq_lengths["vision"],
    )
    columns |= _label_columns(
        latent, spec, spec.unimodal_labels if unimodal_labels is None else unimodal_labels
    )
    columns["id"] = np.array([f"synthetic{i // 8:05d}$_${i % 8 + 1}" for i in range(n)])
    columns["raw_text"] = np.array(
        [_words(row, length) for row, length in zip(text_bert[:, 0], text_lengths, strict=True)]
    )
    return _split_columns(columns, sizes)


def _split_sizes(real: tuple[int, int, int], n_train: int | None) -> tuple[int, int, int]:
    if n_train is None:
        return real
    check_positive_int(n_train, "n_train")
    valid, test = (max(1, round(n_train * size / real[0])) for size in real[1:])
    return n_train, valid, test


def _sequence_shapes(
    spec: Preset, seq_len: int | None, text_dim: int | None
) -> dict[str, tuple[int, int]]:
    width = spec.text_dim if text_dim is None else check_positive_int(text_dim, "text_dim")
    shapes = {"text": (spec.text_len, width), "audio": spec.audio, "vision": spec.vision}
    if seq_len is not None:
        check_positive_int(seq_len, "seq_len", minimum=3)
        shapes = {modality: (seq_len, dim) for modality, (_, dim) in shapes.items()}
    return shapes


def _latents(rng: np.random.Generator, n: int, knobs: dict[str, float]) -> dict[str, np.ndarray]:
    z_s, z_av, u = rng.standard_normal((3, n))
    eps = dict(zip(MODALITIES, rng.standard_normal((3, n)), strict=True))
    eta = dict(zip(MODALITIES, rng.standard_normal((3, n)), strict=True))
    private = dict(zip(MODALITIES, knobs["nuisance"] * rng.standard_normal((3, n)), strict=True))
    w, k, delta = knobs["shared_weight"], knobs["shared_mask"], knobs["unimodal_offset"]
    norm = np.sqrt(1.0 + w**2)
    y_f = (z_s + w * z_av) / norm
    signal = {m: knobs[f"{m}_signal"] for m in MODALITIES}
    copy = {m: r * z_s + np.sqrt(1.0 - r**2) * eta[m] for m, r in signal.items()}
    shared_a = (z_av + k * u) / np.sqrt(1.0 + k**2)
    shared_v = (z_av - k * u) / np.sqrt(1.0 + k**2)
    return {
        "fusion": y_f,
        **{m: y_f + delta * eps[m] for m in MODALITIES},
        "text_view": copy["text"] / norm + delta * eps["text"],
        "text_code": np.stack([copy["text"], eps["text"], private["text"]], axis=1),
        "audio_code": np.stack([copy["audio"], shared_a, eps["audio"], private["audio"]], axis=1),
        "vision_code": np.stack(
            [copy["vision"], shared_v, eps["vision"], private["vision"]], axis=1
        ),
    }


def _token_ids(
    rng: np.random.Generator, view: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 3, L)`` ``[ids, mask, type ids]`` and the lengths; sentiment words grade ``view``."""
    n = view.shape[0]
    lengths = rng.integers(max(3, max_len // 4), max_len + 1, n)
    position = np.arange(max_len)[None, :]
    ids = rng.integers(NEUTRAL_START, VOCAB_SIZE, (n, max_len))
    grade = np.clip(
        np.rint(2.0 * view[:, None] + GRADE_NOISE * rng.standard_normal((n, max_len))),
        -GRADES,
        GRADES,
    )
    lexicon_ids = LEXICON_START + LEXICON_WORDS_PER_GRADE * (grade.astype(np.int64) + GRADES)
    lexicon_ids += rng.integers(0, LEXICON_WORDS_PER_GRADE, (n, max_len))
    # Position 1 always holds a sentiment word, so every sample carries some sentiment.
    sentiment = (rng.random((n, max_len)) < SENTIMENT_TOKEN_RATE) | (position == 1)
    ids = np.where(sentiment, lexicon_ids, ids)
    ids[:, 0] = CLS_ID
    ids[np.arange(n), lengths - 1] = SEP_ID
    mask = position < lengths[:, None]
    ids = np.where(mask, ids, PAD_ID)
    return np.stack([ids, mask.astype(np.int64), np.zeros_like(ids)], axis=1), lengths


def _sequences(
    rng: np.random.Generator,
    code: np.ndarray,
    lengths: np.ndarray,
    steps: int,
    width: int,
    noise: float,
) -> np.ndarray:
    """Repeat ``code @ W`` over the valid steps with white noise; 0 on padding."""
    structure = np.random.default_rng([_STRUCTURE_SEED, code.shape[1], width])
    projection = structure.standard_normal((code.shape[1], width)) / np.sqrt(code.shape[1])
    out = rng.standard_normal((code.shape[0], steps, width), dtype=np.float32)
    out *= noise
    out += (code @ projection).astype(np.float32)[:, None, :]
    out *= (np.arange(steps)[None, :] < lengths[:, None])[..., None]
    return out


def _label_columns(
    latent: dict[str, np.ndarray], spec: Preset, unimodal: bool
) -> dict[str, np.ndarray]:
    def to_label(y: np.ndarray) -> np.ndarray:
        steps = np.rint(spec.label_scale * y / spec.label_step)
        return np.clip(steps * spec.label_step, -spec.label_limit, spec.label_limit).astype(
            np.float32
        )

    names = list(LABEL_KEYS) if unimodal else ["fusion"]
    labels = {LABEL_KEYS[name]: to_label(latent[name]) for name in names}
    labels["classification_labels"] = np.sign(labels["regression_labels"]).astype(np.int64) + 1
    return labels


def _words(ids: np.ndarray, length: int) -> str:
    return " ".join(f"w{token}" for token in ids[1 : length - 1])


def _split_columns(
    columns: dict[str, Any], sizes: tuple[int, int, int]
) -> dict[str, dict[str, Any]]:
    bounds = np.cumsum((0, *sizes))
    out = {}
    for split, start, stop in zip(("train", "valid", "test"), bounds[:-1], bounds[1:], strict=True):
        part = {key: value[start:stop] for key, value in columns.items()}
        for key in ("id", "raw_text", "audio_lengths", "vision_lengths"):
            part[key] = part[key].tolist()
        out[split] = part
    return out
