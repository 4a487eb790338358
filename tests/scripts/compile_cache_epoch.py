"""One epoch of a tiny U-Net on the JAX backend with the project's compile cache on, as a trial runs it.

Usage: python compile_cache_epoch.py CACHE_DIR LEARNING_RATE. Prints one JSON line: the cache's hits and misses in
this process and the epoch's seconds. Run twice with different learning rates to see the second process hit.
"""

import json
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
import keras
import numpy as np

import models
from models.metrics import get_loss, training_metrics
from search.sweep import compile_cache

start = compile_cache.enable_for("jax", True, sys.argv[1])
keras.utils.set_random_seed(0)
model = models.build("unet", num_classes=1, input_shape=(32, 32, 3), dropout=0.1, base_filters=4)
model.compile(keras.optimizers.Adam(float(sys.argv[2])), get_loss("bce_dice"), metrics=training_metrics("segmentation"))
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), rng.integers(0, 2, (16, 32, 32, 1)).astype("float32")
t0 = time.perf_counter()
model.fit(x, y, batch_size=8, epochs=1, verbose=0)
now = compile_cache.counts()
print(json.dumps({k: now[k] - start[k] for k in now} | {"seconds": time.perf_counter() - t0}))
