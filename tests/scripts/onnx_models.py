"""Which registered models `sweep export --format onnx` converts: each built with random weights at its smallest
legal size of at least 64 px, saved, converted by ``search.outputs.deploy.convert`` (the export's own path), and
compared with Keras on three random images. Prints a Markdown table (the README's). Slow: every model is converted once
(NASNetLarge and EfficientNetV2-L take minutes on 2 cores).

    PYTHONPATH=. python tests/scripts/onnx_models.py [MODEL...]
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

import models
from models.tasks import task_info
from search.errors import SweepError
from search.outputs import deploy


def main(names: list[str]) -> None:
    print("| model | task | input | converts | largest difference | model.onnx | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names or models.list_models():
        info = models.get(name)
        size = max(info.min_input_size, 64)
        size += (-size) % info.size_multiple
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            model = models.build(
                name,
                input_shape=(size, size, 3),
                num_classes=task_info(info.task).num_outputs(4),
                weights=None,
                dropout=0.2,
            )
            model.save(Path(tmp) / "m.keras")
            try:
                deploy.convert(Path(tmp) / "m.keras", Path(tmp) / "m.onnx")
            except SweepError as exc:
                print(
                    f"| {name} | {info.task} | {size} | no: {str(exc).split('(', 1)[1].rsplit(')', 1)[0]} | | | "
                    f"{time.perf_counter() - start:.0f} |",
                    flush=True,
                )
                continue
            x = np.random.default_rng(0).integers(0, 256, (3, size, size, 3)).astype(np.uint8)
            diff = np.abs(deploy.onnx_outputs(Path(tmp) / "m.onnx", x) - np.asarray(model(x.astype(np.float32))))
            mb = (Path(tmp) / "m.onnx").stat().st_size / 2**20
            print(
                f"| {name} | {info.task} | {size} | yes | {diff.max():.1e} | {mb:.1f} MB | "
                f"{time.perf_counter() - start:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
