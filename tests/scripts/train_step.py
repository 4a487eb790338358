"""Build every registered model (weights=None, smallest legal input), run one train step and one prediction.

Run as a subprocess with KERAS_BACKEND set, so each backend gets a fresh process. Prints one JSON line per model.
Usage: python train_step.py MODEL[@POLICY][:frozen] ...   (POLICY: a mixed-precision policy, e.g. unet@mixed_bfloat16)
A classifier trains whole, from scratch (freeze_backbone=False, BatchNorm in training mode), unless ":frozen" asks
for a frozen backbone (the study's transfer-learning setting: forward only, BatchNorm in inference mode).
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import models
from models.metrics import get_loss, training_metrics
from models.tasks import task_info

keras.utils.set_random_seed(0)
for arg in sys.argv[1:]:
    started = time.perf_counter()
    spec, _, mode = arg.partition(":")
    name, _, policy = spec.partition("@")
    policy = policy or None
    info = models.get(name)
    size = max(info.min_input_size, info.size_multiple * 2)
    seg = task_info(info.task).masks
    hp = {"dropout": 0.2, **({"base_filters": 4} if seg else {})}
    if "freeze_backbone" in info.hyperparameters:
        hp["freeze_backbone"] = mode == "frozen"
    model = models.build(name, num_classes=1 if seg else 3, input_shape=(size, size, 3), mixed_precision=policy, **hp)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=get_loss("bce_dice" if seg else "categorical_crossentropy"),
        metrics=training_metrics(info.task),
        # One step, measured on 2 cores: TensorFlow runs it eagerly (tracing the graph costs more than the step:
        # EfficientNetV2-L 58 s against 5 s); JAX compiles it, as the sweeps train (op by op, JAX compiles every
        # operation on its own: the segmenters took 161 s that way against 74 s compiled whole).
        run_eagerly=keras.backend.backend() != "jax",
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
    y = (rng.random((2, size, size, 1)) > 0.5).astype("float32") if seg else np.array([0, 2])
    bn = [w for w in model.non_trainable_weights if w.path.endswith("moving_mean")]
    before = [keras.ops.convert_to_numpy(w.value) for w in bn]
    logs = model.train_on_batch(x, y, return_dict=True)
    # BatchNorm in training mode updates its moving statistics; in inference mode (a frozen backbone) it does not.
    bn_moved = [bool(np.any(keras.ops.convert_to_numpy(w.value) != b)) for w, b in zip(bn, before)]
    pred = model.predict(x, verbose=0)
    print(
        json.dumps(
            {
                "model": arg,
                "backend": keras.backend.backend(),
                "loss": float(logs["loss"]),
                "pred_shape": list(pred.shape),
                "pred_dtype": str(pred.dtype),
                "pred_min": float(pred.min()),
                "pred_max": float(pred.max()),
                "row_sums": pred.sum(-1).tolist() if not seg else None,
                "batchnorm_layers": len(bn),
                "batchnorm_moved": sum(bn_moved),
                "seconds": round(time.perf_counter() - started, 1),
            }
        ),
        flush=True,
    )
