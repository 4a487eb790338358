"""A frozen backbone's features on the JAX backend, computed in two calls of different sizes as two parts are, with
the project's compile cache on: prints one JSON line with the programs compiled in each call and how far the padded
features are from the backbone's own predict on the images alone.

Usage: python feature_shapes.py CACHE_DIR
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
import numpy as np

from search.sweep import compile_cache, features
from search.sweep.features import Backbone, backbone_features

features.FEATURE_BATCH = 4  # parts of 3 and 5 images: batches of 3; 4 and 1 unless padded
compile_cache.enable_for("jax", True, sys.argv[1])
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
backbone = Backbone("efficientnetv2_b0", 32, None, 3, "jax", None)
misses = []
for part in (images[:3], images[3:]):
    before = compile_cache.counts()["misses"]
    result = backbone_features(backbone, {"train": part}, sys.argv[1])
    misses.append(compile_cache.counts()["misses"] - before)
extractor = features._LOADED[backbone.key()][0]
alone = np.concatenate([extractor.predict(images[i : i + 1], verbose=0) for i in range(3, 8)])
max_diff = float(np.abs(result.by_split["train"] - alone).max())
print(json.dumps({"misses": misses, "computed": result.computed, "max_diff": max_diff}))
