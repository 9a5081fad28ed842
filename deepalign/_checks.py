"""Input validation shared by every public function: one place for the error messages.

Every check raises :class:`TypeError` (wrong kind of object or dtype) or :class:`ValueError`
(wrong shape, size, device or value) with a message that names the argument, what was
expected and what was received.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)

_validation = {"enabled": True}


def set_validation(enabled: bool) -> None:
    """Turn deepalign's host-side input checks on or off globally (default: on).

    The checks that read values on the host (NaN/Inf scans of features and results, the range
    of the ULGM's indexes) cost one host synchronisation each; shape, dtype and device checks
    read metadata only and always run. As with
    :meth:`torch.distributions.Distribution.set_default_validate_args`, every function and
    module that validates also takes ``validate=True/False`` to override this default per call,
    and the value checks are skipped while :func:`torch.compile` traces, inside
    :mod:`torch.func` transforms and for meta tensors, which have no values to read.

    Args:
        enabled: the new default.

    Raises:
        TypeError: if ``enabled`` is not a bool.

    Example:
        >>> import deepalign
        >>> deepalign.set_validation(False)
        >>> deepalign.is_validation_enabled()
        False
        >>> deepalign.set_validation(True)
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected True or False, got {enabled!r}")
    _validation["enabled"] = enabled


def is_validation_enabled() -> bool:
    """The global default of :func:`set_validation`."""
    return _validation["enabled"]


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """A context in which :func:`set_validation` is ``enabled``; the previous default returns on
    exit.

    Example:
        >>> import deepalign
        >>> with deepalign.validation(False):
        ...     deepalign.is_validation_enabled()
        False
        >>> deepalign.is_validation_enabled()
        True
    """
    previous = is_validation_enabled()
    set_validation(enabled)
    try:
        yield
    finally:
        _validation["enabled"] = previous


def check_validate(validate: object, name: str = "validate") -> bool | None:
    """Return ``validate`` if it is ``True``, ``False`` or ``None``."""
    if validate is not None and not isinstance(validate, bool):
        raise TypeError(f"{name}: expected True, False or None, got {validate!r}")
    return validate


def reads_values(validate: bool | None, *tensors: torch.Tensor) -> bool:
    """Whether host-side value checks run: ``validate`` (``None``: the global default), and
    neither compiling, nor inside a :mod:`torch.func` transform, nor on meta tensors."""
    if not (is_validation_enabled() if validate is None else validate):
        return False
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return False
    return not any(t.device.type == "meta" for t in tensors)


def check_tensor(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a floating-point tensor, else raise :class:`TypeError`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def check_shape(x: torch.Tensor, name: str, shape: Sequence[int | str | None]) -> None:
    """Check ``x.shape`` against a pattern: ints must match, ``None`` matches any size, and a
    str names a size that must be the same wherever the name recurs (``("d", "d")``: square).

    E.g. ``("N", 3)`` for an ``(N, 3)`` tensor.
    """
    named_sizes = [s for s in shape if s is not None]
    if (
        x.dim() == len(shape)
        and all(isinstance(s, str) for s in named_sizes)
        and len(set(named_sizes)) == len(named_sizes)
    ):
        return  # only free sizes: nothing more to check (the common case, made cheap)
    sizes = ["*" if s is None else str(s) for s in shape]
    pattern = f"({sizes[0]},)" if len(sizes) == 1 else "(" + ", ".join(sizes) + ")"  # as tuples
    if x.dim() != len(shape):
        raise ValueError(
            f"{name}: expected a {len(shape)}-D tensor of shape {pattern}, "
            f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    named: dict[str, int] = {}
    for size, want in zip(x.shape, shape, strict=True):
        if isinstance(want, str):
            want = named.setdefault(want, size)
        if isinstance(want, int) and size != want:
            raise ValueError(f"{name}: expected shape {pattern}, got {tuple(x.shape)}")


def check_min_rows(x: torch.Tensor, name: str, minimum: int, why: str = "") -> None:
    """Require at least ``minimum`` rows (dimension 0); ``why`` is appended to the message."""
    if x.shape[0] < minimum:
        hint = ""
        if x.shape[0] == 1 and minimum > 1:
            hint = (
                "; a batch of one row has no covariance: if it is the last batch of an epoch, "
                "pass drop_last=True to the DataLoader"
            )
        raise ValueError(
            f"{name}: expected at least {minimum} rows (samples){why}, got {x.shape[0]} "
            f"(shape {tuple(x.shape)}){hint}"
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    """Require all tensors on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"expected all inputs on one device, got {listed}")


def check_all_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """:func:`check_finite` for several named tensors with one host synchronisation (the
    culprits are looked up only when something is not finite)."""
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all()):
        for name, x in tensors.items():
            check_finite(x, name)


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise :class:`ValueError` if ``x`` holds NaN or Inf (one host synchronisation)."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{name}: expected finite values, got {bad} NaN/Inf entries of {x.numel()} "
            f"(shape {tuple(x.shape)})"
        )


def check_keys(mapping: Mapping[str, object], name: str, expected: Sequence[str]) -> None:
    """Require ``mapping`` to have exactly the keys ``expected``."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name}: expected a mapping name -> tensor, got {type(mapping).__name__}")
    missing = [k for k in expected if k not in mapping]
    extra = [k for k in mapping if k not in expected]
    if missing or extra:
        raise ValueError(
            f"{name}: expected the keys {sorted(expected)}, got {sorted(mapping)}"
            f" (missing {missing}, unexpected {extra})"
        )


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype statistics are computed in: float16/bfloat16 are promoted to float32."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in LOW_PRECISION else dtype


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise :class:`ValueError`."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def check_indexes(indexes: object, name: str, size: int, *, distinct: bool = False) -> torch.Tensor:
    """Return ``indexes`` as a 1-D int64 tensor after checking it selects rows of a ``size``-row
    table (non-empty, in range and, with ``distinct=True``, without repeats)."""
    if not isinstance(indexes, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of indexes, got {type(indexes).__name__}")
    if indexes.is_floating_point() or indexes.is_complex() or indexes.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {indexes.dtype}")
    check_shape(indexes, name, ("B",))
    check_min_rows(indexes, name, 1)
    low, high = int(indexes.min()), int(indexes.max())
    if low < 0 or high >= size:
        raise ValueError(
            f"{name}: expected indexes in [0, {size}), got values from {low} to {high}"
        )
    if distinct:
        values, counts = torch.unique(indexes, return_counts=True)
        repeated = values[counts > 1]
        if repeated.numel():
            raise ValueError(
                f"{name}: expected distinct indexes (a batch may hold a sample once), "
                f"got repeats of {repeated[:5].tolist()}"
            )
    return indexes.long()


def check_lengths(lengths: object, name: str, batch: int, max_length: int) -> torch.Tensor:
    """Check per-sample sequence lengths and return them as a CPU int64 tensor.

    ``lengths`` must be a 1-D tensor of ``batch`` whole numbers in ``[0, max_length]`` (any
    numeric dtype, any device: datasets often store lengths as floats).
    """
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of lengths, got {type(lengths).__name__}")
    check_shape(lengths, name, (batch,))
    cpu = lengths.detach().cpu()
    as_int = cpu.to(torch.int64)
    if cpu.is_floating_point() and not bool((as_int == cpu).all()):
        raise ValueError(f"{name}: expected whole numbers, got {cpu.tolist()}")
    if bool(((as_int < 0) | (as_int > max_length)).any()):
        raise ValueError(
            f"{name}: expected lengths in [0, {max_length}] (the padded sequence length), "
            f"got {as_int.tolist()}"
        )
    return as_int


def check_in_range(value: object, name: str, low: float, high: float = float("inf")) -> float:
    """Return ``value`` as a float if it is a real number in ``[low, high]``."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected a number in [{low}, {high}], got {value}")
    return float(value)
