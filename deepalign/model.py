r"""The reference multi-task model of [Lai2023]_: Self-MM's network ([Yu2021]_) plus alignment.

:class:`~deepalign.MSAConfig` holds the model's hyperparameters, with the published Self-MM
presets for MOSI, MOSEI and SIMS (:meth:`~deepalign.MSAConfig.preset`);
:class:`~deepalign.MultiTaskMSA` is the network of the paper's Eq. 1–8, optionally owning a
:class:`~deepalign.ModalityAlignment` over its modality features. What training needs (batch
size, learning rates, patience, ...) is in :class:`deepalign.training.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from deepalign._checks import (
    check_choice,
    check_in_range,
    check_lengths,
    check_positive_int,
    check_shape,
    check_tensor,
)
from deepalign.alignment import (
    ESTIMATORS,
    PRIVATE_MODES,
    PROJECTIONS,
    ModalityAlignment,
    parse_spec,
)
from deepalign.text import describe_text_encoder, load_text_encoder, text_width

__all__ = ["ALIGN_ON", "PRESETS", "TEXT_MODES", "TEXT_POOLING", "MSAConfig", "MultiTaskMSA"]

TEXT_MODES = ("bert", "features")
TEXT_POOLING = ("cls", "mean")
ALIGN_ON = ("encoder", "post")
MODALITIES = ("text", "audio", "vision")

PRESETS: dict[str, dict[str, Any]] = {
    # The field defaults of MSAConfig are MOSI's.
    "mosi": {},
    "mosei": {
        "audio_hidden": 16,
        "vision_hidden": 32,
        "audio_out": 16,
        "vision_out": 32,
        "post_fusion_dim": 128,
        "post_text_dim": 32,
        "post_audio_dim": 16,
        "post_vision_dim": 32,
        "post_fusion_dropout": 0.1,
        "post_text_dropout": 0.0,
        "post_audio_dropout": 0.0,
        "post_vision_dropout": 0.0,
        "feature_dims": (768, 74, 35),
        "text_encoder": "bert-base-uncased",
    },
    "sims": {
        "audio_hidden": 16,
        "vision_hidden": 64,
        "audio_out": 16,
        "vision_out": 32,
        "post_fusion_dim": 128,
        "post_text_dim": 64,
        "post_audio_dim": 16,
        "post_vision_dim": 32,
        "post_fusion_dropout": 0.0,
        "post_text_dropout": 0.1,
        "post_audio_dropout": 0.1,
        "post_vision_dropout": 0.0,
        "feature_dims": (768, 33, 709),
        "text_encoder": "bert-base-chinese",
    },
}
"""Dataset name -> the fields :meth:`~deepalign.MSAConfig.preset` sets (MMSA's Self-MM values)."""

_WIDTH_FIELDS = (
    "audio_hidden",
    "vision_hidden",
    "audio_out",
    "vision_out",
    "post_fusion_dim",
    "post_text_dim",
    "post_audio_dim",
    "post_vision_dim",
)
_DROPOUT_FIELDS = (
    "audio_lstm_dropout",
    "vision_lstm_dropout",
    "post_fusion_dropout",
    "post_text_dropout",
    "post_audio_dropout",
    "post_vision_dropout",
    "fusion_modality_dropout",
)


@dataclass(frozen=True)
class MSAConfig:
    """Hyperparameters of :class:`MultiTaskMSA` (defaults: the MOSI preset); immutable.

    Build one with :meth:`preset`; every field can be overridden there. The values are those of
    MMSA's published Self-MM configuration ([Mao2022]_, [Yu2021]_). The config is frozen: change
    a field with :func:`dataclasses.replace`, which validates the result as the constructor
    does. The training hyperparameters are in :class:`deepalign.training.TrainConfig`.

    Attributes:
        feature_dims: input widths ``(text, audio, vision)``. The text width is used only when
            ``text_mode="features"``; with ``"bert"`` it is read from the encoder's config.
        text_mode: ``"bert"`` (run :attr:`text_encoder` on token ids) or ``"features"``
            (pre-extracted ``(B, L, d_t)`` features; the first position is the text feature).
        text_pooling: in bert mode, ``"cls"`` takes the last layer's first token (Eq. 1, as
            Self-MM does) and ``"mean"`` the mean over the attention mask's tokens. Use
            ``"mean"`` with encoders trained for mean pooling, such as the packaged MiniLM
            (``text_encoder="minilm"``; a sentence-transformers model whose first token was
            never trained as a sentence summary).
        text_encoder: directory, hub id or ``"minilm"`` for
            :func:`deepalign.text.load_text_encoder`.
        finetune_text: train the text encoder (``True``) or freeze it: a frozen encoder runs
            without gradient and always in evaluation mode (no dropout), so it is a fixed
            function of the tokens and the trainer may cache its output.
        audio_hidden, vision_hidden: LSTM hidden sizes.
        audio_out, vision_out: widths of the audio and vision features (Eq. 2–3).
        audio_lstm_dropout, vision_lstm_dropout: dropout between LSTM state and output layer.
        post_fusion_dim, post_text_dim, post_audio_dim, post_vision_dim: widths of the
            post-layer features (Eq. 5 and 7).
        post_fusion_dropout, post_text_dropout, post_audio_dropout, post_vision_dropout:
            dropout before each post layer.
        fusion_modality_dropout: in training, the probability with which the audio feature
            and, independently, the vision feature of a sample are zeroed in the fusion input
            (kept ones scaled by :math:`1/(1-p)`, as dropout does); the unimodal branches still
            see them. Modality dropout [Neverova2016]_ keeps the fusion from leaning on one
            modality; 0 (the default, Self-MM) disables it.
        alignment: a Table II spec such as ``"V-A"`` or ``"T-V/T-A/A-V"``; ``None`` for none.
        alignment_weight: the factor of the alignment terms in the objective.
        align_on: ``"encoder"`` aligns the features of Eq. 1–3, ``"post"`` those of Eq. 7.
        align_dim: common width ``d`` the aligned features are projected to; ``None`` projects
            to the smallest aligned width when widths differ, and not at all when they agree.
        align_projection: ``"fixed"`` (orthonormal, not learned) or ``"learned"``.
        align_private: penalty of ``+`` terms, ``"bounded"`` or ``"negated"`` (see
            :class:`~deepalign.ModalityAlignment`).
        align_estimator: estimator of the alignment terms, one of
            ``deepalign.alignment.ESTIMATORS`` (see :class:`~deepalign.ModalityAlignment`).

    Raises:
        ValueError: from ``__post_init__`` (also under :func:`dataclasses.replace`) for an
            unknown ``text_mode``, ``text_pooling``, ``align_on``, ``align_projection``,
            ``align_private`` or ``align_estimator``, a malformed ``alignment`` spec, a
            non-positive width, a dropout outside ``[0, 1]`` or a non-finite
            ``alignment_weight``.
        TypeError: for a field of the wrong type (e.g. ``alignment`` neither a str nor
            ``None``, a width that is not an int).

    Example:
        >>> import dataclasses
        >>> from deepalign import MSAConfig
        >>> config = MSAConfig.preset("sims", alignment="V-A")
        >>> config.feature_dims, config.text_encoder, config.vision_hidden, config.alignment
        ((768, 33, 709), 'bert-base-chinese', 64, 'V-A')
        >>> dataclasses.replace(config, align_on="post").align_on
        'post'
    """

    feature_dims: tuple[int, int, int] = (768, 5, 20)
    text_mode: str = "bert"
    text_pooling: str = "cls"
    text_encoder: str = "bert-base-uncased"
    finetune_text: bool = True
    audio_hidden: int = 16
    vision_hidden: int = 32
    audio_out: int = 16
    vision_out: int = 32
    audio_lstm_dropout: float = 0.0
    vision_lstm_dropout: float = 0.0
    post_fusion_dim: int = 128
    post_text_dim: int = 32
    post_audio_dim: int = 16
    post_vision_dim: int = 32
    post_fusion_dropout: float = 0.0
    post_text_dropout: float = 0.1
    post_audio_dropout: float = 0.1
    post_vision_dropout: float = 0.0
    fusion_modality_dropout: float = 0.0
    alignment: str | None = None
    alignment_weight: float = 1.0
    align_on: str = "encoder"
    align_dim: int | None = None
    align_projection: str = "fixed"
    align_private: str = "bounded"
    align_estimator: str = "plugin"

    def __post_init__(self) -> None:
        if not isinstance(self.feature_dims, tuple | list):
            raise TypeError(
                f"feature_dims: expected a (text, audio, vision) tuple of ints, "
                f"got {type(self.feature_dims).__name__}"
            )
        object.__setattr__(self, "feature_dims", tuple(self.feature_dims))
        check_choice(self.text_mode, "text_mode", TEXT_MODES)
        check_choice(self.text_pooling, "text_pooling", TEXT_POOLING)
        check_choice(self.align_on, "align_on", ALIGN_ON)
        check_choice(self.align_projection, "align_projection", PROJECTIONS)
        check_choice(self.align_private, "align_private", PRIVATE_MODES)
        check_choice(self.align_estimator, "align_estimator", ESTIMATORS)
        if not isinstance(self.text_encoder, str):
            raise TypeError(
                f"text_encoder: expected a directory or hub id (str), "
                f"got {type(self.text_encoder).__name__}"
            )
        if not isinstance(self.finetune_text, bool):
            raise TypeError(
                f"finetune_text: expected a bool, got {type(self.finetune_text).__name__}"
            )
        if len(self.feature_dims) != 3:
            raise ValueError(
                f"feature_dims: expected (text, audio, vision) widths, got {self.feature_dims!r}"
            )
        for name, value in zip(MODALITIES, self.feature_dims, strict=True):
            check_positive_int(value, f"feature_dims ({name})")
        for name in _WIDTH_FIELDS:
            check_positive_int(getattr(self, name), name)
        if self.align_dim is not None:
            check_positive_int(self.align_dim, "align_dim")
        for name in _DROPOUT_FIELDS:
            check_in_range(getattr(self, name), name, 0.0, 1.0)
        weight = self.alignment_weight
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise TypeError(
                f"alignment_weight: expected a real number, got {type(weight).__name__}"
            )
        if not math.isfinite(weight):
            raise ValueError(
                f"alignment_weight: expected a finite number, got {self.alignment_weight!r}"
            )
        if self.alignment is not None:
            if not isinstance(self.alignment, str):
                raise TypeError(
                    f"alignment: expected a Table II spec such as 'V-A', or None; "
                    f"got {self.alignment!r}"
                )
            try:
                parse_spec(self.alignment, MODALITIES)
            except ValueError as error:
                raise ValueError(f"alignment: {error}") from None

    @classmethod
    def preset(cls, dataset: str, **overrides: Any) -> MSAConfig:
        """The published Self-MM model configuration of ``dataset``, with ``overrides`` applied.

        Args:
            dataset: ``"mosi"``, ``"mosei"`` or ``"sims"`` (case-insensitive).
            **overrides: field values that replace the preset's.

        Returns:
            A new :class:`MSAConfig`.

        Raises:
            ValueError: for an unknown ``dataset`` (and as the class for bad values).
            TypeError: for an override that is not a field.

        Example:
            >>> from deepalign import MSAConfig
            >>> MSAConfig.preset("mosei", vision_out=8).vision_out
            8
        """
        return _preset(cls, PRESETS, dataset, overrides)


def _preset(cls: type, presets: dict[str, dict[str, Any]], dataset: object, overrides: dict) -> Any:
    """``cls(**presets[dataset], **overrides)`` with errors that name what is valid."""
    key = dataset.lower() if isinstance(dataset, str) else dataset
    if key not in presets:
        raise ValueError(f"dataset: expected one of {sorted(presets)}, got {dataset!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(
            f"overrides: unknown {cls.__name__} fields {unknown}; expected some of {sorted(names)}"
        )
    return cls(**{**presets[key], **overrides})


class SequenceEncoder(nn.Module):
    """One-layer unidirectional LSTM over a padded sequence, then dropout and a linear layer.

    The sequence is packed by length, so padding never enters the LSTM; the final hidden state
    of each sample (at its own last step) is the sequence summary (Eq. 2–3).

    Args:
        in_dim: width of the input frames.
        hidden: LSTM hidden size.
        out_dim: output width.
        dropout: dropout on the final hidden state.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=1, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # An empty sequence (length 0, present in MMSA's data) is read as its first frame.
        packed = pack_padded_sequence(
            x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False
        )
        _, (final_hidden, _) = self.lstm(packed)
        return self.linear(self.dropout(final_hidden[-1]))


class PostHead(nn.Module):
    """Dropout → Linear → ReLU (the post-layer feature) → Linear → ReLU → Linear → 1.

    Args:
        in_dim: input width.
        dim: width of the post-layer feature and of the hidden layer.
        dropout: dropout on the input.
    """

    def __init__(self, in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.post = nn.Linear(in_dim, dim)
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(feature, prediction)`` of shapes ``(B, dim)`` and ``(B, 1)``."""
        feature = torch.relu(self.post(self.dropout(x)))
        return feature, self.out(torch.relu(self.hidden(feature)))


class MultiTaskMSA(nn.Module):
    r"""Self-MM's multi-task network ([Yu2021]_) as [Lai2023]_ uses it (Eq. 1–8).

    With :math:`h_t` the last layer's first ([CLS]) token of the text encoder and
    :math:`\mathrm{sLSTM}` a one-layer LSTM's final hidden state followed by dropout and a
    linear layer:

    .. math::

        F_t = \mathrm{BERT}(x_t)_{[\mathrm{CLS}]}, \quad
        F_a = \mathrm{sLSTM}_a(x_a), \quad F_v = \mathrm{sLSTM}_v(x_v)

        F_f^* = \mathrm{ReLU}(W_1^f\,\mathrm{drop}([F_t; F_a; F_v]) + b_1^f), \quad
        F_s^* = \mathrm{ReLU}(W_1^s\,\mathrm{drop}(F_s) + b_1^s), \ s \in \{t, a, v\}

        y_m = W_3^m\,\mathrm{ReLU}(W_2^m F_m^* + b_2^m) + b_3^m, \ m \in \{f, t, a, v\}

    (the paper writes Eq. 6 and 8 as one linear layer; Self-MM's network, followed here, has the
    hidden layer :math:`W_2`).

    The output is a dict of three groups, each a dict of tensors keyed by head or modality
    name (plain dicts, so DDP, :func:`torch.compile` and :mod:`torch.func` take them):

    - ``"predictions"``: ``"fusion"``, ``"text"``, ``"audio"``, ``"vision"`` -> the
      predictions :math:`y_f, y_t, y_a, y_v`, ``(B, 1)``.
    - ``"post"``: ``"fusion"``, ``"text"``, ``"audio"``, ``"vision"`` -> the post-layer
      features :math:`F_f^*, F_t^*, F_a^*, F_v^*` (Eq. 5 and 7; after the ReLU), widths
      ``post_fusion_dim``, ``post_text_dim``, ... These are what the ULGM uses.
    - ``"encoder"``: ``"text"``, ``"audio"``, ``"vision"`` -> the modality features
      :math:`F_t, F_a, F_v` of Eq. 1–3, widths text width, ``audio_out``, ``vision_out``.

    The feature groups are named as the values of ``config.align_on``: the alignment takes
    ``outputs[config.align_on]``. The names and the keys of Self-MM's code are in
    :doc:`/model`.

    **Alignment.** With ``config.alignment`` set, the model owns :attr:`alignment`, a
    :class:`~deepalign.ModalityAlignment` over the features ``text``/``audio``/``vision``, and
    :meth:`alignment_loss` evaluates it. By default (``align_on="encoder"``) it aligns the
    modality features :math:`F_t, F_a, F_v` of Eq. 1–3, projected to a common width ``d``
    (``align_dim``; default the smallest aligned width) by fixed orthonormal maps. Reasons
    (:doc:`/model` quotes the paper): the paper names these very features, by the symbols of
    Eq. 2–3 rather than the starred ones of Eq. 7, and projects them "into a low-dimensional
    space of dimension d"; they feed both the fusion and the unimodal branches, so the shared
    information learned there reaches every head; and the post-layer features are ReLU outputs
    that the ULGM measures distances on, which alignment would couple to the label generation.
    ``align_on="post"`` aligns :math:`F_s^*` instead.

    **A frozen text encoder** (``finetune_text=False``) runs without gradient and stays in
    evaluation mode whatever :meth:`train` says, so :math:`F_t` is a fixed function of the
    tokens: :meth:`encode_text` computes it, and ``forward(None, ..., text_features=F_t)`` runs
    the rest of the network on it (the trainer's cache, :doc:`/training`).

    Args:
        config: the hyperparameters.
        text_encoder: an already loaded encoder for ``text_mode="bert"``; default ``None``
            loads ``config.text_encoder`` with :func:`deepalign.text.load_text_encoder`.
            Ignored (must be ``None``) in ``"features"`` mode.

    Shape:
        - text: ``(B, 3, L)`` token ids, attention mask and segment ids (any numeric dtype;
          cast to int64; on the CPU or the model's device: ids on the CPU are trimmed there,
          without a host synchronisation, and then moved) in ``"bert"`` mode; ``(B, L, d_t)``
          features in ``"features"`` mode;
          ``None`` when ``text_features`` (:math:`(B, d_t)`, :meth:`encode_text`) is given.
        - audio: :math:`(B, L_a, d_a)`; audio_lengths: :math:`(B,)` whole numbers in
          :math:`[0, L_a]` (0 is read as 1).
        - vision: :math:`(B, L_v, d_v)`; vision_lengths: :math:`(B,)`.
        - output: the dict above; predictions :math:`(B, 1)`, features :math:`(B, \cdot)`.

    Raises:
        TypeError: if ``config`` is not an :class:`MSAConfig`, or an input is not a tensor.
        ValueError: if ``text_encoder`` is given in ``"features"`` mode, or an input has the
            wrong shape or width, the batch sizes differ, or lengths are out of range.

    Example:
        >>> import torch
        >>> from deepalign import MSAConfig, MultiTaskMSA
        >>> config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(8, 5, 20))
        >>> model = MultiTaskMSA(config)
        >>> out = model(torch.randn(4, 10, 8), torch.randn(4, 7, 5), torch.tensor([7, 5, 3, 0]),
        ...             torch.randn(4, 6, 20), torch.tensor([6, 6, 2, 4]))
        >>> for group, tensors in out.items():
        ...     print(group, {name: tuple(value.shape) for name, value in tensors.items()})
        predictions {'fusion': (4, 1), 'text': (4, 1), 'audio': (4, 1), 'vision': (4, 1)}
        post {'fusion': (4, 128), 'text': (4, 32), 'audio': (4, 16), 'vision': (4, 32)}
        encoder {'text': (4, 8), 'audio': (4, 16), 'vision': (4, 32)}
    """

    def __init__(self, config: MSAConfig, *, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(config, MSAConfig):
            raise TypeError(f"config: expected an MSAConfig, got {type(config).__name__}")
        self.config = config
        self.text_encoder = self._build_text_encoder(config, text_encoder)
        self.text_dim = (
            config.feature_dims[0] if self.text_encoder is None else text_width(self.text_encoder)
        )
        _, audio_dim, vision_dim = config.feature_dims
        self.audio_encoder = SequenceEncoder(
            audio_dim, config.audio_hidden, config.audio_out, config.audio_lstm_dropout
        )
        self.vision_encoder = SequenceEncoder(
            vision_dim, config.vision_hidden, config.vision_out, config.vision_lstm_dropout
        )
        fused = self.text_dim + config.audio_out + config.vision_out
        self.fusion_head = PostHead(fused, config.post_fusion_dim, config.post_fusion_dropout)
        self.text_head = PostHead(self.text_dim, config.post_text_dim, config.post_text_dropout)
        self.audio_head = PostHead(
            config.audio_out, config.post_audio_dim, config.post_audio_dropout
        )
        self.vision_head = PostHead(
            config.vision_out, config.post_vision_dim, config.post_vision_dropout
        )
        self.alignment = self._build_alignment(config)
        self.train()

    def describe(self) -> dict[str, Any]:
        """What this model runs, for a record: the text encoder and the feature widths.

        The widths are those the model was built with: the text width is the loaded encoder's
        (which may differ from ``config.feature_dims[0]``) in ``"bert"`` mode.

        Returns:
            ``{"text_encoder": ..., "feature_dims": [text, audio, vision]}``;
            ``text_encoder`` is :func:`deepalign.text.describe_text_encoder` of the encoder, or
            ``None`` in ``"features"`` mode.

        Example:
            >>> from deepalign import MSAConfig, MultiTaskMSA
            >>> config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(8, 5, 20))
            >>> MultiTaskMSA(config).describe()
            {'text_encoder': None, 'feature_dims': [8, 5, 20]}
        """
        _, audio_dim, vision_dim = self.config.feature_dims
        encoder = None if self.text_encoder is None else describe_text_encoder(self.text_encoder)
        return {"text_encoder": encoder, "feature_dims": [self.text_dim, audio_dim, vision_dim]}

    @property
    def text_frozen(self) -> bool:
        """Whether a text encoder runs and is frozen (``text_mode="bert"``, no fine-tuning).

        Its output is then a fixed function of the tokens: :meth:`encode_text` may be computed
        once and passed to :meth:`forward` as ``text_features``.
        """
        return self.text_encoder is not None and not self.config.finetune_text

    def train(self, mode: bool = True) -> MultiTaskMSA:
        """As :meth:`torch.nn.Module.train`, but a frozen text encoder stays in eval mode."""
        super().train(mode)
        if self.text_frozen:
            self.text_encoder.eval()
        return self

    @staticmethod
    def _build_text_encoder(config: MSAConfig, encoder: nn.Module | None) -> nn.Module | None:
        if config.text_mode == "features":
            if encoder is not None:
                raise ValueError(
                    "text_encoder: expected None with text_mode='features', got an encoder"
                )
            return None
        encoder = load_text_encoder(config.text_encoder) if encoder is None else encoder
        encoder.requires_grad_(config.finetune_text)
        return encoder

    def _alignment_dims(self) -> dict[str, int]:
        """Widths of the features ``align_on`` selects, by ModalityAlignment's names."""
        config = self.config
        if config.align_on == "encoder":
            return {"text": self.text_dim, "audio": config.audio_out, "vision": config.vision_out}
        return {
            "text": config.post_text_dim,
            "audio": config.post_audio_dim,
            "vision": config.post_vision_dim,
        }

    def _build_alignment(self, config: MSAConfig) -> ModalityAlignment | None:
        if config.alignment is None:
            return None
        dims = self._alignment_dims()
        proj_dim = config.align_dim
        if proj_dim is None:
            terms = parse_spec(config.alignment, list(dims))
            widths = {dims[name] for term in terms for name in (term.first, term.second)}
            proj_dim = min(widths) if len(widths) > 1 else None
        return ModalityAlignment(
            config.alignment,
            dims,
            proj_dim=proj_dim,
            projection=config.align_projection,
            private=config.align_private,
            weight=config.alignment_weight,
            estimator=config.align_estimator,
        )

    def forward(
        self,
        text: torch.Tensor | None,
        audio: torch.Tensor,
        audio_lengths: torch.Tensor,
        vision: torch.Tensor,
        vision_lengths: torch.Tensor,
        *,
        text_features: torch.Tensor | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Run the network (Eq. 1–8); shapes and the output dict are in the class docstring.

        ``text_features`` (with ``text=None``) replaces the text encoder by its output
        :math:`F_t`, as :meth:`encode_text` returns it.
        """
        batch = self._text_batch(text, text_features)
        _, audio_dim, vision_dim = self.config.feature_dims
        audio_lengths = _check_sequence(audio, audio_lengths, "audio", batch, audio_dim)
        vision_lengths = _check_sequence(vision, vision_lengths, "vision", batch, vision_dim)
        t = self._text_feature(text) if text_features is None else text_features
        a = self.audio_encoder(audio, audio_lengths)
        v = self.vision_encoder(vision, vision_lengths)
        fused = torch.cat([t, self._drop_modality(a), self._drop_modality(v)], dim=-1)
        feature_f, y_m = self.fusion_head(fused)
        feature_t, y_t = self.text_head(t)
        feature_a, y_a = self.audio_head(a)
        feature_v, y_v = self.vision_head(v)
        return {
            "predictions": {"fusion": y_m, "text": y_t, "audio": y_a, "vision": y_v},
            "post": {
                "fusion": feature_f,
                "text": feature_t,
                "audio": feature_a,
                "vision": feature_v,
            },
            "encoder": {"text": t, "audio": a, "vision": v},
        }

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        r"""The text feature :math:`F_t` of Eq. 1 (what :meth:`forward` feeds its heads).

        In ``"bert"`` mode the encoder's pooled last layer (``text_pooling``), with gradient
        only when the encoder is fine-tuned; in ``"features"`` mode the first position.

        Args:
            text: as :meth:`forward` takes it.

        Returns:
            :math:`F_t`, to pass back as ``forward(None, ..., text_features=...)``.

        Shape:
            - text: ``(B, 3, L)`` token ids, mask and segment ids, or ``(B, L, d_t)`` features.
            - output: :math:`(B, d_t)`.

        Raises:
            TypeError: if ``text`` is not a tensor.
            ValueError: if ``text`` has the wrong shape for the text mode.

        Example:
            >>> import torch
            >>> from deepalign import MSAConfig, MultiTaskMSA
            >>> config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(8, 5, 20))
            >>> model = MultiTaskMSA(config).eval()
            >>> text, audio = torch.randn(3, 4, 8), torch.randn(3, 6, 5)
            >>> vision, lengths = torch.randn(3, 6, 20), torch.tensor([6, 4, 2])
            >>> cached = model.encode_text(text)
            >>> tuple(cached.shape)
            (3, 8)
            >>> same = model(None, audio, lengths, vision, lengths, text_features=cached)
            >>> fresh = model(text, audio, lengths, vision, lengths)
            >>> torch.equal(same["predictions"]["fusion"], fresh["predictions"]["fusion"])
            True
        """
        self._text_batch(text, None)
        return self._text_feature(text)

    def _drop_modality(self, x: torch.Tensor) -> torch.Tensor:
        """Zero whole samples of ``x`` with probability ``fusion_modality_dropout``."""
        p = self.config.fusion_modality_dropout
        if not self.training or p == 0:
            return x
        return x * nn.functional.dropout(x.new_ones(x.shape[0], 1), p, training=True)

    def _text_batch(self, text: object, text_features: object) -> int:
        """Check ``text`` (or ``text_features``) against the text mode; return the batch size."""
        if text_features is not None:
            if text is not None:
                raise ValueError("text: expected None when text_features is given, got a tensor")
            features = check_tensor(text_features, "text_features")
            check_shape(features, "text_features", ("B", self.text_dim))
            return features.shape[0]
        if not isinstance(text, torch.Tensor):
            raise TypeError(f"text: expected a torch.Tensor, got {type(text).__name__}")
        if self.text_encoder is None:
            check_tensor(text, "text")
            check_shape(text, "text (features mode)", ("B", "L", self.text_dim))
        else:
            check_shape(text, "text (ids, mask, segment ids)", ("B", 3, "L"))
        return text.shape[0]

    def _text_feature(self, text: torch.Tensor) -> torch.Tensor:
        """The first ([CLS]) position of the last layer (Eq. 1), or the mean over the tokens of
        the attention mask (``text_pooling="mean"``); in features mode, the first position."""
        if self.text_encoder is None:
            return text[:, 0]
        # Trimmed where the ids are: on the CPU (as the trainer passes them) it costs no host
        # synchronisation, and only the kept positions are copied to the model's device.
        tokens = _trim_padding(text.long()).to(self.text_head.post.weight.device)
        ids, mask, segments = tokens.unbind(dim=1)
        with torch.set_grad_enabled(self.config.finetune_text and torch.is_grad_enabled()):
            hidden = self.text_encoder(
                input_ids=ids, attention_mask=mask, token_type_ids=segments
            ).last_hidden_state
        if self.config.text_pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)

    def alignment_loss(
        self, outputs: dict[str, dict[str, torch.Tensor]], *, return_terms: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r"""The weighted alignment loss on a forward pass's features.

        .. math::

            \mathcal{L}_\text{align} = w \sum_\text{terms} \phi(\theta_\text{term})

        with :math:`w` = ``alignment_weight``, the terms of ``config.alignment`` and
        :math:`\phi` the identity for a ``-`` term and the ``align_private`` penalty for a
        ``+`` term (see :class:`~deepalign.ModalityAlignment`), on the features chosen by
        ``align_on``. Without a configured alignment it is a zero scalar (and no terms).

        Args:
            outputs: the dict returned by :meth:`forward`; the loss reads its feature group
                ``outputs[config.align_on]``.
            return_terms: also return each term's contribution :math:`w\,\phi(\theta)`,
                detached, for logging (they add up to the loss). Default: ``False``.

        Returns:
            The loss, a scalar; with ``return_terms``, ``(loss, {term: value})``.

        Shape:
            - outputs: as :meth:`forward` returns it, with at least 2 samples.
            - output: :math:`()`.

        Raises:
            ValueError: for a batch of fewer than 2 samples (a covariance needs 2), outputs
                without the group ``config.align_on`` or with missing features, or non-finite
                features.

        Example:
            >>> import torch
            >>> from deepalign import MSAConfig, MultiTaskMSA
            >>> config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(8, 5, 20),
            ...                           alignment="V-A", alignment_weight=0.5)
            >>> model = MultiTaskMSA(config)
            >>> out = model(torch.randn(6, 3, 8), torch.randn(6, 4, 5), torch.full((6,), 4),
            ...             torch.randn(6, 4, 20), torch.full((6,), 4))
            >>> loss, terms = model.alignment_loss(out, return_terms=True)
            >>> loss.shape, sorted(terms), bool(torch.isclose(terms["vision-audio"], loss))
            (torch.Size([]), ['vision-audio'], True)
        """
        if self.alignment is None:
            zero = outputs["predictions"]["fusion"].new_zeros(())
            return (zero, {}) if return_terms else zero
        return self.alignment(self._aligned_features(outputs), return_terms=return_terms)

    def alignment_loss_and_diagnostics(
        self, outputs: dict[str, dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """:meth:`alignment_loss` with ``return_terms`` and :meth:`alignment_diagnostics`
        from one computation of the statistics
        (:meth:`ModalityAlignment.loss_and_diagnostics
        <deepalign.ModalityAlignment.loss_and_diagnostics>`): what the trainer runs on every
        step. Without a configured alignment: a zero loss and empty dicts.

        Args:
            outputs: the dict returned by :meth:`forward`, at least 4 samples.

        Returns:
            ``(loss, terms, diagnostics)``.

        Raises:
            ValueError: as :meth:`alignment_loss`, and for fewer than 4 samples.

        Example:
            >>> import torch
            >>> from deepalign import MSAConfig, MultiTaskMSA
            >>> config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(8, 5, 20),
            ...                           alignment="V-A")
            >>> model = MultiTaskMSA(config)
            >>> out = model(torch.randn(6, 3, 8), torch.randn(6, 4, 5), torch.full((6,), 4),
            ...             torch.randn(6, 4, 20), torch.full((6,), 4))
            >>> loss, terms, diag = model.alignment_loss_and_diagnostics(out)
            >>> bool(torch.isclose(diag["vision-audio"].plugin, loss))
            True
        """
        if self.alignment is None:
            return outputs["predictions"]["fusion"].new_zeros(()), {}, {}
        return self.alignment.loss_and_diagnostics(self._aligned_features(outputs))

    def alignment_diagnostics(
        self, outputs: dict[str, dict[str, torch.Tensor]], *, validate: bool | None = None
    ) -> dict[str, Any]:
        """Each alignment term's plug-in and unbiased value, sampling floor and scales.

        :meth:`ModalityAlignment.diagnostics <deepalign.ModalityAlignment.diagnostics>` on the
        features ``align_on`` selects (:doc:`/estimators`), without gradient; empty without a
        configured alignment. The trainer logs them every epoch.

        Args:
            outputs: the dict returned by :meth:`forward`.
            validate: as in :meth:`ModalityAlignment.diagnostics
                <deepalign.ModalityAlignment.diagnostics>`.

        Returns:
            term -> :class:`~deepalign.functional.AlignmentDiagnostics`.

        Example:
            >>> import torch
            >>> from deepalign import MSAConfig, MultiTaskMSA
            >>> config = MSAConfig.preset("mosi", text_mode="features", feature_dims=(8, 5, 20),
            ...                           alignment="V-A")
            >>> model = MultiTaskMSA(config)
            >>> out = model(torch.randn(6, 3, 8), torch.randn(6, 4, 5), torch.full((6,), 4),
            ...             torch.randn(6, 4, 20), torch.full((6,), 4))
            >>> d = model.alignment_diagnostics(out)["vision-audio"]
            >>> bool(torch.isclose(d.plugin - d.unbiased, d.floor))
            True
        """
        if self.alignment is None:
            return {}
        return self.alignment.diagnostics(self._aligned_features(outputs), validate=validate)

    def _aligned_features(
        self, outputs: dict[str, dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The feature group ``align_on`` names (``"encoder"`` or ``"post"``) of ``outputs``."""
        group = self.config.align_on
        features = outputs.get(group) if isinstance(outputs, Mapping) else None
        if not isinstance(features, Mapping):
            found = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"outputs: expected forward's dict with the feature group {group!r} "
                f"(config.align_on), got {found}"
            )
        return features


def _trim_padding(tokens: torch.Tensor) -> torch.Tensor:
    """Drop the trailing positions that no sample of the batch attends to.

    The encoder's output at the attended tokens does not depend on them (their attention
    weights are exactly zero), and MOSI's utterances fill about a third of the usual 50
    positions, so this saves most of the encoder's time. It reads one number: a host
    synchronisation when ``tokens`` is on an accelerator, none on the CPU.
    """
    positions = torch.arange(1, tokens.shape[-1] + 1, device=tokens.device)
    keep = int((tokens[:, 1].any(dim=0) * positions).max())  # 1 + the last attended position
    return tokens[..., : max(keep, 1)]


def _check_sequence(x: object, lengths: object, name: str, batch: int, width: int) -> torch.Tensor:
    """Check a padded ``(B, L, width)`` sequence and its lengths; return CPU int64 lengths."""
    x = check_tensor(x, name)
    check_shape(x, name, (batch, "L", width))
    return check_lengths(lengths, f"{name}_lengths", batch, x.shape[1])
