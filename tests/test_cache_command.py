"""`sweep cache`: sizes per kind of entries the real code wrote, clearing a kind, trimming least recently used
first, private folders and the warning when others can write in the cache."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from data_pipeline import cache, duplicate_clusters, load, scan, synth
from search.cli import main
from search.outputs import deploy
from search.sweep.features import Backbone, backbone_features


def _cli(capsys, *args):
    capsys.readouterr()
    code = main(["cache", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _bytes_under(folder: Path) -> int:
    """What `du --apparent-size -b` counts for the entries: every file, the in-progress ones (.tmp-*) left out."""
    total = 0
    for top in folder.iterdir() if folder.is_dir() else ():
        if not top.name.startswith("."):
            total += (
                top.stat().st_size if top.is_file() else sum(p.stat().st_size for p in top.rglob("*") if p.is_file())
            )
    return total


def _real_entries(root: Path, data: Path, monkeypatch) -> dict[str, Path]:
    """One entry of each kind, written by the code that writes them in a sweep, oldest first."""
    made = {"synthetic": synth.embedded_dataset((2, 2, 2, 2), size=32, seed=1, cache_dir=root)}
    load(scan(data), 32, cache_dir=root)
    made["decoded_32"] = next((root / "decoded").iterdir())
    load(scan(data), 48, cache_dir=root)
    made["decoded_48"] = next(p for p in (root / "decoded").iterdir() if p != made["decoded_32"])
    duplicate_clusters(scan(data), cache_dir=root)
    made["duplicates"] = next((root / "duplicates").iterdir())
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    backbone = Backbone("efficientnetv2_b0", 32, None, 0, "tensorflow", None)  # the smallest frozen backbone
    backbone_features(backbone, {"train": images}, root)
    made["features"] = root / "features" / backbone.key()
    code = "import sys; from search.sweep.compile_cache import enable_for; enable_for('jax', True, sys.argv[1]); "
    code += "import jax; print(jax.jit(lambda x: x * 2 + 1)(1.0))"  # one program into JAX's compilation cache
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code, root], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # A cost objective's measurement, written as a trial writes it (the measuring itself is a sweep test's subject)
    monkeypatch.setattr(deploy, "model_cost", lambda model, size: {"latency_ms": model, "size_mb": 0.5})
    built = []

    def make():  # the model to time: built only when there is no measurement to read
        built.append(1)
        return float(len(built))

    key = {"model": "custom_cnn", "blocks": 2}
    assert deploy.build_cost(make, key, 32, root) == {"latency_ms": 1.0, "size_mb": 0.5}
    made["costs"] = next((root / "costs").glob("*.json"))
    made["costs"].write_text("{")  # left damaged: measured again, not an error
    assert deploy.build_cost(make, key, 32, root)["latency_ms"] == 2.0
    assert deploy.build_cost(make, key, 32, root)["latency_ms"] == 2.0 and len(built) == 2  # then read
    return made


def test_sizes_per_kind_clear_and_trim_least_recently_used_first(synth_root, tmp_path, capsys, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(root))
    made = _real_entries(root, synth_root, monkeypatch)
    for folder in (root, *(root / k for k in cache.KINDS)):  # created private
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder

    rows = {r["kind"]: r for r in cache.usage()}
    for kind in cache.KINDS:
        assert rows[kind]["bytes"] == _bytes_under(root / kind) > 0, kind
    assert [rows[k]["entries"] for k in cache.KINDS] == [1, 2, 1, 1, len(cache.entries("jax-compile")), 1]
    assert any(p.name.endswith(".lock") for p in (root / "features").iterdir())  # a sidecar: not an entry
    code, out, err = _cli(capsys)
    assert code == 0 and not err and f"cache folder: {root}" in out
    for kind in cache.KINDS:
        assert f"{kind} " in out and cache.human(rows[kind]["bytes"]) in out

    # A cache hit marks its entry used: reading decoded_32 again makes it the most recently used.
    assert load(scan(synth_root), 32, cache_dir=root).from_cache
    jax = cache.entries("jax-compile")
    order = [made["synthetic"], made["decoded_48"], made["duplicates"], made["features"], *[e.paths[0] for e in jax]]
    order += [made["costs"], made["decoded_32"]]
    by_age = sorted((e for k in cache.KINDS for e in cache.entries(k)), key=lambda e: e.used)
    assert [e.paths[0] for e in by_age] == order
    total = sum(e.size for e in by_age)
    cap = total - by_age[0].size - 1  # one byte too many without the oldest: the next oldest goes too
    code, out, _ = _cli(capsys, "--max-size", cap)
    assert code == 0 and "2 least recently used entries removed" in out
    assert not made["synthetic"].exists() and not made["decoded_48"].exists()
    assert made["features"].exists() and made["decoded_32"].exists()
    assert sum(r["bytes"] for r in cache.usage()) == total - by_age[0].size - by_age[1].size <= cap

    code, out, _ = _cli(capsys, "--clear", "features")
    assert code == 0 and not (root / "features").exists() and made["decoded_32"].exists()
    code, out, _ = _cli(capsys, "--clear", "all")
    assert code == 0 and all(r["bytes"] == 0 for r in cache.usage()) and root.is_dir()


def test_bad_requests_remove_nothing_and_others_writing_the_cache_is_warned(synth_root, tmp_path, capsys, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(root))
    load(scan(synth_root), 32, cache_dir=root)
    before = cache.usage()
    for args, says in (
        (("--clear", "../data"), "not a kind of cache entry; choose one of costs, decoded, duplicates, features"),
        (("--clear", "decoded", "--max-size", "5 parsecs"), "--max-size '5 parsecs': not a size"),
    ):
        code, _, err = _cli(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert cache.usage() == before

    outside = tmp_path / "elsewhere"  # a kind folder that is a link out of the cache: never followed
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (root / "features").symlink_to(outside)
    code, _, err = _cli(capsys, "--clear", "all")
    assert code == 2 and "is a link out of the cache folder" in err and (outside / "keep.txt").exists()

    root.chmod(0o777)
    code, _, err = _cli(capsys)
    assert code == 0 and err.count("\n") == 1 and f"the cache folder {root} can be written by other users" in err
    assert "JAX's compilation cache loads native code from it" in err and "chmod 700" in err


@pytest.mark.parametrize(
    "text, size",
    [("5GB", 5 * 10**9), ("500 MB", 500 * 10**6), ("1.5GiB", int(1.5 * 2**30)), ("1024", 1024), ("2kb", 2000)],
)
def test_sizes_are_read_in_decimal_and_binary_units(text, size):
    assert cache.parse_size(text) == size


def test_entries_past_the_cap_go_oldest_first():
    entries = [
        cache.Entry("decoded", (Path(n),), size, used) for n, size, used in (("a", 5, 3), ("b", 4, 1), ("c", 3, 2))
    ]
    assert [e.paths[0].name for e in cache.to_evict(entries, 12)] == []
    assert [e.paths[0].name for e in cache.to_evict(entries, 8)] == ["b"]
    assert [e.paths[0].name for e in cache.to_evict(entries, 5)] == ["b", "c"]
    assert [e.paths[0].name for e in cache.to_evict(entries, 0)] == ["b", "c", "a"]
