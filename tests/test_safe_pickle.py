"""The restricted unpickler: numpy data loads, anything that names another callable is refused."""

import builtins
import copyreg
import io
import os
import pickle
import re
import struct
import warnings

import numpy as np
import pytest

from deepalign._safe_pickle import (
    CorruptPickleError,
    SafeUnpickler,
    UnsafePickleError,
    safe_load,
)
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


# ----------------------------------------------------------------- the walk, proxies, errors


def _whole(payload: bytes) -> bytes:
    return b"\x80\x02" + payload + b"."


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_builtin_data_through_the_proxies_round_trips(tmp_path, protocol):
    # bytes, bytearray and complex go through _codecs.encode, bytearray() and complex() at
    # protocols 0-2; OrderedDict and object arrays through REDUCE/BUILD
    from collections import OrderedDict

    data = {
        "bytearray": bytearray(b"\x00\xffab"),
        "empty bytes": b"",
        "empty bytearray": bytearray(),
        "complex": 1.5 - 2j,
        "ordered": OrderedDict(b=1, a=2),
        "objects": np.array([{"a": 1}, None, "x"], dtype=object),
        "str_scalar": np.str_("abc"),
    }
    loaded = safe_load(_dump(data, tmp_path / "ok.pkl", protocol))
    assert loaded["bytearray"] == data["bytearray"]
    assert type(loaded["bytearray"]) is bytearray
    assert loaded["empty bytes"] == b""
    assert loaded["empty bytearray"] == bytearray()
    assert loaded["complex"] == data["complex"]
    assert list(loaded["ordered"].items()) == [("b", 1), ("a", 2)]
    assert loaded["objects"].tolist() == data["objects"].tolist()
    assert loaded["str_scalar"] == "abc"


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_truncated_streams_name_the_file_and_the_offset(tmp_path, protocol):
    blob = pickle.dumps({"audio": np.arange(40.0)}, protocol=protocol)
    for cut in (0, 1, len(blob) // 2, len(blob) - 1):
        path = tmp_path / "cut.pkl"
        path.write_bytes(blob[:cut])
        with pytest.raises(CorruptPickleError, match=r"cut\.pkl: truncated: .*byte \d+") as info:
            safe_load(path)
        offsets = [int(n) for n in re.findall(r"byte (\d+)", str(info.value))]
        assert all(offset <= cut for offset in offsets)


def test_a_byte_that_is_no_opcode_is_a_corrupt_pickle(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"\x80\x04\xff\x00.")
    with pytest.raises(CorruptPickleError, match=r"junk\.pkl: byte 2 \(b'\\xff'\) is not a pickle"):
        safe_load(path)


def test_malformed_content_is_a_corrupt_pickle_not_another_error(tmp_path):
    # an array whose data is 8 bytes shorter than its shape: numpy's ValueError inside
    data = np.arange(6.0).tobytes()
    blob = pickle.dumps(np.arange(6.0), protocol=3)  # no frames; data as SHORT_BINBYTES
    damaged = blob.replace(b"C\x30" + data, b"C\x28" + data[:40])
    assert damaged != blob
    path = tmp_path / "damaged.pkl"
    path.write_bytes(damaged)
    with pytest.raises(CorruptPickleError, match=r"damaged\.pkl: not a well-formed pickle \(Val"):
        safe_load(path)


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (b"(Vtouch x\nios\nsystem\n", "opcode INST at byte 12"),
        (b"(cos\nsystem\nVtouch x\no", "opcode OBJ"),
        (b"c__builtin__\nbytearray\n(J\x00\x00\x00\x01t\x81", "opcode NEWOBJ "),
        (b"c__builtin__\nbytearray\n(t}\x92", "opcode NEWOBJ_EX"),
        (b"Pos.system\n", "opcode PERSID"),
        (b"Vos.system\nQ", "opcode BINPERSID"),
        (b"\x82\x01", "opcode EXT1"),
        (b"\x83\x01\x00", "opcode EXT2"),
        (b"\x84\x01\x00\x00\x00", "opcode EXT4"),
    ],
)
def test_opcodes_that_reach_outside_or_instantiate_are_refused(tmp_path, payload, refused):
    path = tmp_path / "evil.pkl"
    path.write_bytes(_whole(payload))
    with pytest.raises(UnsafePickleError, match=rf"evil\.pkl: refusing the pickle {refused}"):
        safe_load(path)


def test_a_registered_and_cached_extension_cannot_bypass_the_allow_list(tmp_path):
    # A library that registered os.system as extension 0x7e5b and loaded it once leaves it in
    # copyreg's cache, which the C unpickler reads without calling find_class.
    code = 0x7E5B
    copyreg.add_extension("os", "system", code)
    try:
        ext2 = b"\x83" + struct.pack("<H", code)
        assert pickle.loads(_whole(ext2)) is os.system  # trusted load: now cached
        marker = tmp_path / "pwned"
        path = tmp_path / "evil.pkl"
        path.write_bytes(_whole(ext2 + b"(V" + f"touch {marker}".encode() + b"\ntR"))
        with pytest.raises(UnsafePickleError, match="opcode EXT2"):
            safe_load(path)
        assert not marker.exists()
    finally:
        copyreg.remove_extension("os", "system", code)


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [
        (b"c__builtin__\nbytearray\n(\x8a\x05\x00\x10\xa5\xd4\xe8tR", r"'builtins\.bytearray'"),
        (b"c__builtin__\nbytes\n(J\x00\x00\x00\x40tR", r"'builtins\.bytes' called .*\(int\)"),
        (b"c_codecs\nencode\n(Vx\nVzlib\ntR", r"'_codecs\.encode' called"),
        (
            b"cnumpy._core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(J\x00\x10\x00\x00tC\x01btR",
            r"'numpy\._core\.multiarray\._reconstruct' called",
        ),
        (b"cnumpy\nndarray\n((J\x00\x10\x00\x00ttR", r"refusing to call 'numpy\.ndarray'"),
        (
            b"cnumpy._core.numeric\n_frombuffer\n(N}V__defaults__\n(J\x01\x00\x00\x00tstb",
            r"refusing to BUILD .*'numpy\._core\.numeric\._frombuffer'",
        ),
        (b"cnumpy\ndtype\n}Vkind\nVO\nsb", r"refusing to BUILD .*'numpy\.dtype'"),
    ],
)
def test_allowed_callables_refuse_the_calls_no_pickler_writes(tmp_path, payload, pattern):
    path = tmp_path / "evil.pkl"
    path.write_bytes(_whole(payload))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refusing ") as info:
        safe_load(path)
    assert re.search(pattern, str(info.value))


def test_numpy_functions_are_not_modified_by_a_refused_build(tmp_path):
    from numpy._core import numeric

    before = numeric._frombuffer.__defaults__
    path = tmp_path / "evil.pkl"
    path.write_bytes(
        _whole(b"cnumpy._core.numeric\n_frombuffer\n(N}V__defaults__\n(J\x01\x00\x00\x00tstb")
    )
    with pytest.raises(UnsafePickleError):
        safe_load(path)
    assert numeric._frombuffer.__defaults__ == before


class _NonSeekable(io.RawIOBase):
    def __init__(self, data):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buffer):
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_non_seekable_streams_skip_the_walk_but_keep_the_allow_list(tmp_path):
    array = np.arange(5.0)
    ok = SafeUnpickler(_NonSeekable(pickle.dumps({"a": array}, protocol=5)), source="pipe")
    np.testing.assert_array_equal(ok.load()["a"], array)
    evil = pickle.dumps(_RunsCommand(tmp_path / "pwned"), protocol=4)
    with pytest.raises(UnsafePickleError, match=r"^pipe: refusing to load the global"):
        SafeUnpickler(_NonSeekable(evil), source="pipe").load()
    truncated = SafeUnpickler(_NonSeekable(pickle.dumps([1, 2], protocol=4)[:-3]), source="pipe")
    with pytest.raises(CorruptPickleError, match=r"^pipe: not a well-formed pickle"):
        truncated.load()
    with pytest.raises(UnsafePickleError, match="persistent id"):
        SafeUnpickler(_NonSeekable(_whole(b"Pfoo\n")), source="pipe").load()
    assert not (tmp_path / "pwned").exists()
