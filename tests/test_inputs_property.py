"""Whatever a user types or points at, the CLI answers with an exit code and a message, never a traceback, and
writes nothing when it refuses. Hypothesis generates study YAML, `--set` values and CSV manifests; each example runs
`search.cli.main` in this process (a subprocess per example would import TensorFlow every time)."""

import contextlib
import io
import socket
import tempfile
from pathlib import Path

import cv2
import numpy as np
import yaml
from conftest import tree_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.cli import main

_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _assert_one_message(err: str) -> None:
    """A refusal is one `error:` line; several problems found at once are one headline ending in `:` with the
    problems listed under it, indented (and a last line saying what to do)."""
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    assert lines[0].startswith("error: ") and "error: " not in "\n".join(lines[1:]), err
    assert len(lines) == 1 or (lines[0].endswith(":") and all(ln.startswith("  ") for ln in lines[1:-1])), err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- study YAML and --set values, through `sweep submit` (it validates the study here, then contacts a job server:
# the one at a closed port on 127.0.0.1 is unreachable, so a valid study ends in that one-line refusal) ----------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["tensorflow", "torch", "adam", "unet", "custom_cnn", "auto", "grid", "nonzero", "1e-3"]),
    st.text(max_size=12),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
_SECTIONS = ("task", "search", "space", "train", "data", "scheduler", "resources", "presets")
_FIELDS = ("epochs", "batch_size", "backend", "model", "lr", "image_size", "data_dir", "seed", "algorithm", "weights")
_STUDY = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(_SECTIONS), st.text(max_size=8)),
        st.one_of(_VALUES, st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=4)),
        max_size=6,
    ).map(lambda d: {"task": "classification", **d} if "task" not in d else d),
    st.text(max_size=60),  # not YAML, or YAML that is not a mapping
)
_SET = st.one_of(
    st.builds(
        lambda k, v: f"{k}={v}",
        st.sampled_from([f"{s}.{f}" for s in _SECTIONS[1:] for f in _FIELDS]),
        st.text(max_size=10),
    ),
    st.text(max_size=20),
)


@_SETTINGS
@given(study=_STUDY, sets=st.lists(_SET, max_size=3), builtin=st.booleans())
def test_any_study_and_set_values_get_exit_2_and_one_message(study, sets, builtin):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(study if isinstance(study, str) else yaml.safe_dump(study, allow_unicode=True))
        before = tree_state(tmp)
        argv = ["submit", "classification" if builtin else str(path), "--preset", "smoke"][: 4 if builtin else 2]
        argv += ["--address", f"http://127.0.0.1:{_closed_port()}", "--storage", str(Path(tmp) / "runs")]
        for item in sets:
            argv += ["--set", item]
        code, out, err = _cli(argv)
        assert code == 2 and not out, (code, out, err)
        _assert_one_message(err)
        assert tree_state(tmp) == before


# ---- CSV manifests, through `sweep data check` (0: no problems, 1: problems listed, 2: refused) ----------------

_CELLS = st.one_of(
    st.sampled_from(["a0.png", "b0.png", "a1.png", "./b1.png", "missing.png", "../outside.png", "/nope/x.png", ""]),
    st.sampled_from(["a", "b", " a", "B"]),
    st.text(max_size=10),
)
_COLUMNS = st.lists(
    st.one_of(st.sampled_from(["image", "label", "mask", "Image ", "path"]), st.text(max_size=6)), max_size=4
)


def _csv(columns: list[str], rows: list[list[str]]) -> str:
    import csv

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(rows)
    return text.getvalue()


_MANIFEST = st.one_of(
    st.builds(_csv, _COLUMNS, st.lists(st.lists(_CELLS, min_size=0, max_size=4), max_size=5)),
    st.text(max_size=80),  # anything at all
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


@_SETTINGS
@given(manifest=_MANIFEST, task=st.sampled_from(["auto", "classification", "segmentation"]))
def test_any_csv_manifest_gets_an_exit_code_and_never_a_traceback(manifest, task):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        for i, name in enumerate(["a0.png", "a1.png", "b0.png", "b1.png"]):
            assert cv2.imwrite(str(root / name), np.full((8, 8, 3), 50 * i, np.uint8))
        (root / "manifest.csv").write_text(manifest, errors="surrogateescape")
        before = tree_state(tmp)
        code, out, err = _cli(["data", "check", str(root / "manifest.csv"), "--task", task])
        assert code in (0, 1, 2), (code, err)
        if code == 2:
            _assert_one_message(err)
            assert not out
        else:
            assert not err and out.rstrip().endswith("no problems found" if code == 0 else "")
        assert tree_state(tmp) == before  # the data folder is never written


def test_unknown_storage_scheme_and_bad_counts_are_one_line(tmp_path):
    code, _, err = _cli(["ls", "--storage", "ftp://host/runs"])
    assert code == 2 and err.startswith("error: ftp://host/runs: not a storage location") and err.count("\n") == 1
    code, _, err = _cli(["data", "synth", str(tmp_path / "out"), "--counts", "3,x"])
    assert code == 2 and err == "error: --counts must be comma-separated integers, got '3,x'\n"
    assert not (tmp_path / "out").exists()
