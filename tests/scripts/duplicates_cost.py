"""What finding duplicates costs on a set the size of the study's (3,256 synthetic 224-pixel smears, the Kaggle ALL
set's class counts): decoding and signing every image, comparing every pair of hashes, and a cached second run.

    PYTHONPATH=. python tests/scripts/duplicates_cost.py /tmp/dups-cost   # a new folder (the set is written there)
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data_pipeline import scan, synth
from data_pipeline.duplicates import duplicate_clusters, near_pairs, signatures


def main(folder: str) -> None:
    root = Path(folder)
    if not (root / "Original").is_dir():
        start = time.perf_counter()
        synth.write_dataset(root, synth.REAL_COUNTS, 224, seed=0, fmt="png")
        print(f"wrote {sum(synth.REAL_COUNTS)} images in {time.perf_counter() - start:.1f} s")
    index = scan(root)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        sig = signatures(index)
        signed = time.perf_counter() - start
        usable = np.ones(len(index), bool)
        start = time.perf_counter()
        near_pairs(sig.phash, sig.thumbs, usable)
        pairs = time.perf_counter() - start
        start = time.perf_counter()
        clusters = duplicate_clusters(index, cache_dir=cache)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        duplicate_clusters(index, cache_dir=cache)
        warm = time.perf_counter() - start
    n = len(index)
    print(f"{n} images, {n * (n - 1) // 2} pairs, {len(clusters)} clusters")
    print(f"decode and sign: {signed:.1f} s; compare all pairs: {pairs:.2f} s")
    print(f"duplicate_clusters: first run {cold:.1f} s, cached {warm:.2f} s (hashing the files' bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
