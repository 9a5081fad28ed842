"""The restricted unpickler: numpy data loads, anything that names another callable is refused."""

import builtins
import io
import os
import pickle
import warnings

import numpy as np
import pytest

from deepalign._safe_pickle import SafeUnpickler, UnsafePickleError, safe_load
from deepalign.data import load_mmsa


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _WritesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


class _Evaluates:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w')",))


def _dump(obj, path, protocol=pickle.HIGHEST_PROTOCOL):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize(
    ("payload", "refused"), [(_RunsCommand, "system"), (_WritesFile, "open"), (_Evaluates, "eval")]
)
def test_malicious_pickle_runs_nothing_and_writes_nothing(tmp_path, payload, refused, protocol):
    marker = tmp_path / "pwned"
    # hidden inside a plausible MMSA layout, where a careless loader would reach it
    evil = {"train": {"id": ["a$_$1"], "audio": payload(marker)}, "valid": {}, "test": {}}
    path = _dump(evil, tmp_path / "evil.pkl", protocol)
    before = sorted(tmp_path.iterdir())
    # protocol 2 writes Python 2 module names (posix, __builtin__): match module.name loosely
    with pytest.raises(UnsafePickleError, match=rf"global '[\w.]+\.{refused}'"):
        load_mmsa(path)
    assert not marker.exists()
    assert sorted(tmp_path.iterdir()) == before


def test_error_names_the_file_and_the_global(tmp_path):
    path = _dump(_RunsCommand(tmp_path / "x"), tmp_path / "evil.pkl")
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refusing to load the global"):
        safe_load(path)


def test_refusal_is_an_unpickling_error(tmp_path):
    path = _dump(_WritesFile(tmp_path / "y"), tmp_path / "evil.pkl")
    with pytest.raises(pickle.UnpicklingError):
        safe_load(path)


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_numpy_and_builtin_data_round_trips(tmp_path, protocol):
    data = {
        "floats": np.arange(12, dtype=np.float32).reshape(2, 3, 2),
        "ints": np.arange(4, dtype=np.int64),
        "big_endian": np.array([1.5, -2.0], dtype=">f8"),
        "strings": np.array(["a$_$1", "b$_$2"]),
        "objects": np.array(["text", 3], dtype=object),
        "scalar": np.float32(0.25),
        "bool": np.bool_(True),
        "bytes": b"\x00\xff",
        "containers": [("x", 1), {2, 3}, frozenset({4})],
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    path = _dump(data, tmp_path / "ok.pkl", protocol)
    loaded = safe_load(path)
    reference = pickle.loads(path.read_bytes())  # trusted: this test wrote it
    assert loaded.keys() == data.keys()
    for key, value in data.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded[key], value)
            assert loaded[key].dtype == reference[key].dtype
        else:
            assert loaded[key] == value


def test_numpy_1x_module_names_load_without_deprecation_warning(tmp_path):
    # numpy 2 writes numpy._core.*; numpy 1.x files say numpy.core.*: rewrite a protocol-2
    # pickle (GLOBAL opcodes are newline-terminated text) to the 1.x spelling.
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    blob = pickle.dumps({"a": array, "s": np.float64(2.5)}, protocol=2)
    old_style = blob.replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in old_style
    (tmp_path / "old.pkl").write_bytes(old_style)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = safe_load(tmp_path / "old.pkl")
    np.testing.assert_array_equal(loaded["a"], array)
    assert loaded["s"] == 2.5


def test_unpickler_reports_its_source(tmp_path):
    blob = pickle.dumps(_RunsCommand(tmp_path / "z"))
    with pytest.raises(UnsafePickleError, match=r"^memory: "):
        SafeUnpickler(io.BytesIO(blob), source="memory").load()
