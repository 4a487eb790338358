"""An exported model without a deep-learning framework: ONNX, checked against Keras, and a standalone bundle.

``sweep export EXPERIMENT --to DIR --format onnx`` adds to the export folder (beside ``model.keras``, not instead):
- ``model.onnx``: the whole model (its preprocessing layers included), converted by tf2onnx through Keras's own
  ``Model.export(format="onnx")`` in a child process on the TensorFlow backend, whatever backend the sweep ran on.
  It is checked on the study's test split: ONNX Runtime's outputs must match Keras's within ``ONNX_TOLERANCE`` or
  the export fails, naming the difference, and nothing is written.
- ``predict.py`` and ``preprocess.py``: what a clinic needs to predict with ``onnxruntime``, ``numpy`` and
  ``opencv-python-headless`` alone (``preprocess.py`` is this service's own ``data_pipeline/preprocess.py``, copied:
  the same crop/MUSICA/... steps the model was trained with). ``export.json`` holds the rest: classes, input size,
  steps, temperature, threshold.

Why tf2onnx: it is the converter Keras itself calls for the TensorFlow backend, which this service always installs;
Keras's other routes need jax2onnx (for JAX, with flax/orbax behind it) or PyTorch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import SweepError

if TYPE_CHECKING:  # numpy only where it is used: `sweep --help` reads FORMATS
    import numpy as np
    import pandas as pd

ONNX_FILE = "model.onnx"
PREDICT_SCRIPT = "predict.py"
PREPROCESS_SCRIPT = "preprocess.py"
BUNDLE_FILES = (ONNX_FILE, PREDICT_SCRIPT, PREPROCESS_SCRIPT)
BUNDLE_REQUIREMENTS = ("onnxruntime", "numpy", "opencv-python-headless")  # all predict.py imports
ONNX_TOLERANCE = 1e-4  # largest |ONNX Runtime - Keras| allowed on any output value of the test split
FORMATS = ("keras", "onnx")
LATENCY_RUNS = 30  # timed runs per setting (after two warm-up runs)
QUANTIZATIONS = ("int8",)
INT8_FILE = "model.int8.onnx"
CALIBRATION_IMAGES = 256  # at most, from the training split (its first, in split order)


def convert(keras_file: Path, onnx_file: Path) -> dict:
    """Convert a ``.keras`` file to ONNX in a child process on the TensorFlow backend (tf2onnx, through
    ``keras.Model.export``); what the conversion used (converter, opset). A model that cannot be converted: a
    SweepError with tf2onnx's reason."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "search.outputs.deploy", str(keras_file), str(onnx_file)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not onnx_file.is_file():
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        if done.returncode < 0:  # killed: most often by the kernel for memory (a large model on a small machine)
            reason = f"the converter was killed by signal {-done.returncode}; out of memory?"
        raise SweepError(f"--format onnx: this model cannot be converted to ONNX ({reason}); export it without it")
    return json.loads(done.stdout.splitlines()[-1])


def _convert_here(keras_file: str, onnx_file: str) -> None:
    """The child process of ``convert``: prints what it used as one JSON line, or exits 1 with the reason as its
    last line on stderr (tf2onnx writes a graph with the ops it cannot convert left in, so the result is loaded
    with ONNX Runtime here, and what tf2onnx called unsupported becomes the reason)."""
    import logging

    import keras
    import numpy as np
    import onnx
    import tf2onnx

    _register_erfc()
    unsupported: list[str] = []

    class _Unsupported(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Unsupported ops"):
                unsupported.append(record.getMessage())

    logging.getLogger("tf2onnx").addHandler(_Unsupported())
    model = keras.saving.load_model(keras_file, safe_mode=True, compile=False)
    for layer in _layers(model):  # their statistics as graph constants, not extra inputs (see _layers)
        if isinstance(layer, keras.layers.Normalization) and layer.mean is not None:
            layer.mean, layer.variance = np.asarray(layer.mean), np.asarray(layer.variance)
    model(np.zeros((1, *model.input_shape[1:]), np.float32))  # Keras exports only a model that has been called
    model.export(onnx_file, format="onnx", verbose=False)
    try:
        inputs = session(Path(onnx_file)).get_inputs()
    except Exception as exc:  # onnxruntime's own error types
        reason = unsupported[-1] if unsupported else str(exc).splitlines()[0]
        sys.exit(f"tf2onnx left TensorFlow operations it cannot convert: {reason}")
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        sys.exit(f"the ONNX model takes {len(inputs)} inputs ({names}), not one batch of images")
    opset = max(o.version for o in onnx.load(onnx_file).opset_import if o.domain in ("", "ai.onnx"))
    print(json.dumps({"converter": f"tf2onnx {tf2onnx.__version__} (keras.Model.export)", "opset": opset}))


def _layers(layer):
    """Every layer inside ``layer``, nested models included. Keras's Normalization layers (EfficientNetV2's
    input scaling, a random frozen backbone's feature standardization) hold their mean and variance as eager tensors,
    which a traced function captures as placeholders: tf2onnx would make them inputs of the ONNX model."""
    yield layer
    for sub in getattr(layer, "layers", ()):
        yield from _layers(sub)


def _register_erfc() -> None:
    """A tf2onnx handler for TensorFlow's Erfc, which Keras's exact GELU calls (U-Net+FPN with GELU): ONNX has Erf,
    so erfc(x) = 1 - erf(x)."""
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class _Erfc:
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            import numpy as np

            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
            erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
            node.type = "Sub"
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])


def session(onnx_file: Path, threads: int | None = None):
    """An ONNX Runtime session on the CPU (``threads``: intra-op threads; None: all cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported ``model.onnx`` called as the service calls a Keras model, ``model(batch, training=False)``, with
    ONNX Runtime alone (its answer a NumPy array): so ``models.evaluation.predict`` (batches, test-time augmentation)
    and everything after it (temperature, threshold, answers) are the same code for both runtimes."""

    def __init__(self, onnx_file: Path, threads: int | None = None):
        self.session = session(onnx_file, threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images, training: bool = False):
        import numpy as np

        del training  # an exported graph is the inference graph
        return self.session.run(None, {self.input: np.asarray(images, np.float32)})[0]


def onnx_outputs(onnx_file: Path, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The ONNX model's outputs for uint8 RGB images, batch by batch (``models.evaluation.predict``)."""
    from models.evaluation import predict

    return predict(OnnxModel(onnx_file), images, batch_size)


def latency(onnx_file: Path, image: np.ndarray, threads: int | None, runs: int = LATENCY_RUNS) -> dict:
    """Milliseconds ONNX Runtime takes for one image (batch 1) on this machine's CPU with ``threads`` intra-op
    threads (None: all cores): median and 95th percentile of ``runs`` timed runs after two warm-up runs."""
    import time

    import numpy as np

    run = session(onnx_file, threads)
    feed = {run.get_inputs()[0].name: image[None].astype(np.float32)}
    for _ in range(2):
        run.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return {"median": round(float(np.median(times)), 3), "p95": round(float(np.percentile(times, 95)), 3), "runs": runs}


def model_cost(model, image_size: int) -> dict:
    """What a whole Keras model costs to run as it would be deployed (``results.COST_COLUMNS``): its ONNX
    conversion's batch-1 latency on this machine's CPU (a random image of the input size; median and 95th
    percentile of ``LATENCY_RUNS`` runs, on one thread and on all cores), its parameter count and its ONNX file size
    in MiB. Raises SweepError when it cannot be converted."""
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        keras_file, onnx_file = Path(tmp) / "model.keras", Path(tmp) / ONNX_FILE
        model.save(keras_file)
        convert(keras_file, onnx_file)
        image = np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        one, every = latency(onnx_file, image, 1), latency(onnx_file, image, None)
        size = onnx_file.stat().st_size
    return {
        "latency_ms": one["median"],
        "latency_p95_ms": one["p95"],
        "latency_all_threads_ms": every["median"],
        "latency_all_threads_p95_ms": every["p95"],
        "params": int(model.count_params()),
        "size_mb": round(size / 2**20, 3),
    }


def build_cost(make_model, key: dict, image_size: int, cache_dir: str | Path) -> dict:
    """``model_cost`` of the architecture ``key`` describes (a search's cost objective, measured as a trial builds
    its model), once per machine: trials that differ only in what does not change the network (lr, dropout, ...)
    read the first one's measurement from the cache folder (kind ``costs``; an unreadable entry is measured again).
    One measurement at a time per cache folder, so that two trials never time each other; ``make_model`` is called
    only to measure."""
    import hashlib
    import platform
    from importlib.metadata import version

    from filelock import FileLock

    from data_pipeline.cache import cache_folder, mark_used

    folder = cache_folder("costs", cache_dir)
    versions = {p: version(p) for p in ("keras", "tensorflow", "tf2onnx", "onnxruntime")}  # what converts and runs it
    key = {**key, "image_size": image_size, "host": platform.node(), **versions}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    entry = folder / f"{digest}.json"
    with FileLock(str(folder / ".measuring.lock")):  # a dot: not an entry of `sweep cache`
        try:
            cost = json.loads(entry.read_text())["cost"]
            mark_used(entry)
            return cost
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or one a crash or a trim left damaged
            pass
        cost = model_cost(make_model(), image_size)
        staged = folder / f".{digest}.tmp"
        staged.write_text(json.dumps({"key": key, "cost": cost}))
        staged.replace(entry)
    return cost


def checkpoint_cost(checkpoint_path: str, experiment_dir: str, image_size: int) -> dict:
    """``model_cost`` of a trial's checkpoint, its whole model assembled as the export assembles it."""
    import tempfile

    from search import storage as store
    from search.study.checkpoints import whole_model

    with tempfile.TemporaryDirectory() as tmp:
        model = whole_model(store.download(checkpoint_path, tmp), experiment_dir)
    return model_cost(model, image_size)


def measure_costs(frame, metric: str, mode: str, image_size: int, experiment_dir: str) -> dict:
    """``checkpoint_cost`` of each of ``results.cost_candidates(frame)``: {row index: cost}. One at a time (two
    measurements side by side would time each other), as Ray tasks on this node, the machine that finalizes the
    sweep, asking for no CPU so that a head without CPUs for trials runs them too. A candidate that cannot be
    measured is left without a cost, with a warning."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from search.study.results import cost_candidates, error_line

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(num_cpus=0, num_gpus=0, max_retries=0, scheduling_strategy=here)(checkpoint_cost)
    costs = {}
    for i, row in cost_candidates(frame, metric, mode).iterrows():
        try:
            costs[i] = ray.get(task.remote(row["checkpoint"], experiment_dir, image_size))
        except Exception as exc:  # Ray's error around the task's own
            why = error_line(exc)
            print(f"warning: the deployment cost of {row['trial']} was not measured ({why})", file=sys.stderr)
    return costs


def measure_experiment(experiment: str) -> pd.DataFrame:
    """``sweep costs``: ``measure_costs`` of a finished sweep on this machine (a local Ray), the cost columns of
    results.csv replaced by what was measured now; the measured rows."""
    import ray

    from search import storage as store
    from search.cluster.connect import init_ray
    from search.study import experiment as exp
    from search.study.results import COST_COLUMNS, measured

    experiment = store.normalize(experiment)
    frame, study = exp.load_results(experiment), exp.load_study(experiment)
    started = not ray.is_initialized()
    init_ray(None, study.train.backend)
    try:
        costs = measure_costs(frame, study.metric, study.mode, study.data.image_size, experiment)
    finally:
        if started:
            ray.shutdown()
    if not costs:
        raise SweepError(f"no trial of {experiment} could be timed (the warnings above say why)")
    frame = frame.drop(columns=[c for c in COST_COLUMNS if c in frame])
    for column in COST_COLUMNS:
        frame[column] = frame.index.map(lambda i, c=column: costs[i][c] if i in costs else float("nan"))
    exp.save_results_table(experiment, frame)
    return measured(frame)


def parity_problem(keras_out: np.ndarray, onnx_out: np.ndarray, n_images: int, tolerance: float = ONNX_TOLERANCE):
    """Why the ONNX model is not the Keras model on these images, or None (pure)."""
    import numpy as np

    if keras_out.shape != onnx_out.shape:
        return f"ONNX Runtime's outputs have shape {onnx_out.shape}, Keras's {keras_out.shape}"
    diff = float(np.abs(keras_out - onnx_out).max()) if keras_out.size else 0.0
    if not diff <= tolerance:  # a NaN fails too
        return (
            f"ONNX Runtime's outputs differ from Keras's by up to {diff:.2e} on the {n_images} test images "
            f"(allowed: {tolerance:g})"
        )
    return None


def add_onnx(staging: Path, keras_file: Path, model, test_images: np.ndarray, batch_size: int) -> dict:
    """``model.onnx`` in ``staging`` (converted from ``keras_file``, checked against ``model``, the same model loaded,
    on the test split's images), and the standalone bundle beside it; the manifest's ``onnx`` section. Raises
    SweepError when the conversion fails or does not match."""
    import numpy as np

    from data_pipeline.layout import IMAGE_EXTENSIONS
    from models.evaluation import predict

    used = convert(keras_file, staging / ONNX_FILE)
    keras_out = predict(model, test_images, batch_size)
    onnx_out = onnx_outputs(staging / ONNX_FILE, test_images, batch_size)
    problem = parity_problem(keras_out, onnx_out, len(test_images))
    if problem:
        raise SweepError(f"--format onnx: {problem}: the conversion is not faithful; export without --format onnx")
    write_bundle(staging)
    cpu = {"cores": os.cpu_count(), "one_thread": latency(staging / ONNX_FILE, test_images[0], 1)}
    cpu["all_threads"] = latency(staging / ONNX_FILE, test_images[0], None)
    return {
        "file": ONNX_FILE,
        **used,
        "checked_on": "test split",
        "images": len(test_images),
        "max_abs_difference": float(np.abs(keras_out - onnx_out).max()) if keras_out.size else 0.0,
        "tolerance": ONNX_TOLERANCE,
        "size_mb": round((staging / ONNX_FILE).stat().st_size / 2**20, 2),
        "latency_ms": {"batch": 1, "measured_on": "the machine that exported it", **cpu},
        "standalone": {"script": PREDICT_SCRIPT, "requires": list(BUNDLE_REQUIREMENTS)},
        "image_extensions": sorted(IMAGE_EXTENSIONS),  # what predict.py reads from a folder
    }


def quantize_int8(onnx_file: Path, out_file: Path, calibration: np.ndarray, batch_size: int = 16) -> dict:
    """``out_file``: ``onnx_file`` quantized to int8 by ONNX Runtime's own static quantizer, its activation ranges
    calibrated (min/max) on ``calibration`` images, which must be training images only. QDQ format, int8 weights
    per channel, uint8 activations, 7-bit weight range: ONNX Runtime's advice for x86 CPUs with or without VNNI.
    What it used, for the manifest."""
    import tempfile

    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = session(onnx_file).get_inputs()[0].name
    batches = (calibration[i : i + batch_size].astype(np.float32) for i in range(0, len(calibration), batch_size))

    class Reader:  # onnxruntime.quantization.CalibrationDataReader: one feed per call, None at the end
        def get_next(self):
            return next(({name: b} for b in batches), None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred and graph optimized, as the quantizer expects
        # ONNX's own shape inference; the symbolic one (for transformers' dynamic shapes) would need sympy
        quant_pre_process(str(onnx_file), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_file),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return {
        "quantizer": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8, per channel, 7-bit range",
        "activations": "uint8",
        "calibration": {"split": "train", "images": len(calibration), "method": "min/max"},
    }


def add_int8(staging: Path, data, task: str, classes: tuple[str, ...], batch_size: int) -> dict:
    """``model.int8.onnx`` beside ``model.onnx`` in ``staging``, calibrated on the training split's images; the test
    split's metrics of both ONNX models (probabilities before any temperature, the study's default 0.5 threshold for
    masks) and their change; size and batch-1 latency. The manifest's ``onnx.int8`` section."""
    from models.evaluation import report_from_probs
    from models.tasks import task_info

    calibration = data.train.images[:CALIBRATION_IMAGES]
    used = quantize_int8(staging / ONNX_FILE, staging / INT8_FILE, calibration, batch_size)
    headline = task_info(task).headline
    test = {}
    for which, file in (("float32", ONNX_FILE), ("int8", INT8_FILE)):
        report = report_from_probs(data.test, onnx_outputs(staging / file, data.test.images, batch_size), task, classes)
        test[which] = {m: float(report[m]) for m in headline}
    image = data.test.images[0]
    cpu = {"cores": os.cpu_count(), "one_thread": latency(staging / INT8_FILE, image, 1)}
    cpu["all_threads"] = latency(staging / INT8_FILE, image, None)
    return {
        "file": INT8_FILE,
        **used,
        "test": test,
        "test_change": {m: round(test["int8"][m] - test["float32"][m], 6) for m in headline},
        "size_mb": round((staging / INT8_FILE).stat().st_size / 2**20, 2),
        "latency_ms": {"batch": 1, "measured_on": "the machine that exported it", **cpu},
    }


def write_bundle(folder: Path) -> None:
    """``predict.py`` (this package's ``bundle/predict.py``) and ``preprocess.py`` (``data_pipeline/preprocess.py``:
    numpy and OpenCV only) into ``folder``."""
    from data_pipeline import preprocess

    shutil.copyfile(Path(__file__).parent / "bundle" / PREDICT_SCRIPT, folder / PREDICT_SCRIPT)
    shutil.copyfile(preprocess.__file__, folder / PREPROCESS_SCRIPT)


if __name__ == "__main__":
    _convert_here(*sys.argv[1:3])
