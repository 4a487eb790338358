"""Grad-CAM on a hand-made classifier whose evidence is known, on the backend KERAS_BACKEND names.

The model: a fixed 1×1 convolution whose channel 0 is the red and channel 1 the green intensity, the ``pool`` layer,
then a softmax whose class 1 logit is red minus green (class 0: green minus red). The image is black with a red
square in one corner and a green square in the opposite one. ``check()`` returns, per class, where the heatmap
peaks and its mean inside each square; run as a script, it prints that as one JSON line.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
from keras import layers

from models.gradcam import gradcam, overlay


def check() -> dict:
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(2, 1, use_bias=False, name="features")(inputs)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(2, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("features").set_weights([np.array([[1, 0], [0, 1], [0, 0]], "float32").reshape(1, 1, 3, 2) / 50])
    model.get_layer("probabilities").set_weights([np.array([[-1, 1], [1, -1]], "float32"), np.zeros(2, "float32")])

    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 2:12, 3:13, 0] = 200  # red: class 1's evidence
    image[0, 20:30, 22:30, 1] = 200  # green: class 0's
    red, green = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    red[2:12, 3:13], green[20:30, 22:30] = True, True
    out = {"backend": keras.backend.backend()}
    for c in (0, 1):
        heat = gradcam(model, image, c)[0]
        out[str(c)] = {
            "peak": [int(v) for v in np.unravel_index(heat.argmax(), heat.shape)],
            "max": float(heat.max()),
            "in_red": float(heat[red].mean()),
            "in_green": float(heat[green].mean()),
        }
    predicted = gradcam(model, image)[0]  # the predicted class: 1 (more red pixels than green)
    out["predicted_is_class_1"] = bool(np.allclose(predicted, gradcam(model, image, 1)[0]))
    blend = overlay(image[0], predicted)
    # jet: dark red where the heat is 1 (the red square), dark blue where it is 0 (the green square)
    out["overlay"] = [list(blend.shape), str(blend.dtype), int(blend[5, 5, 2]), int(blend[25, 25, 2])]
    return out


if __name__ == "__main__":
    print(json.dumps(check()), flush=True)
