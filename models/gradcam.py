"""Grad-CAM heatmaps (Selvaraju et al. 2017) for a registered classifier, on whichever Keras backend is active.

The classifier is split where its last feature map A (the 4-D input of the ``pool`` layer, i.e. the backbone's
output) enters the head. For the class c of each image, α_k = the spatial mean of ∂ log p_c / ∂ A_k, and the heatmap
is ReLU(Σ_k α_k A_k), upsampled to the image and scaled to [0, 1] (all zeros when nothing speaks for c). The
gradient is taken by the active backend: TensorFlow's GradientTape, ``jax.grad``, or PyTorch's autograd.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np

from models.classifiers import FEATURES


def has_map(model: keras.Model) -> bool:
    """Whether Grad-CAM can look inside ``model``: a classifier with one ``pool`` layer (a k-fold ensemble has none)."""
    return FEATURES in {layer.name for layer in model.layers}


def split_at_map(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(extractor, head): image -> the feature map the ``pool`` layer reads, and that map -> probabilities. The head
    reuses the classifier's own layers (shared weights)."""
    pool = model.get_layer(FEATURES)
    fmap = pool.input
    if len(fmap.shape) != 4:
        raise ValueError(f"{model.name}: the input of layer {FEATURES!r} is not a feature map (shape {fmap.shape})")
    extractor = keras.Model(model.input, fmap, name=f"{model.name}_map")
    x = inputs = keras.Input(fmap.shape[1:], dtype=fmap.dtype, name="feature_map")
    for layer in model.layers[model.layers.index(pool) :]:
        x = layer(x)
    return extractor, keras.Model(inputs, x, name=f"{model.name}_map_head")


def _log_prob_gradients(head: keras.Model, fmap: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """∂ Σ_i log p_{c_i}(A_i) / ∂ A, by the active backend."""
    backend = keras.backend.backend()
    rows = np.arange(len(classes))
    if backend == "tensorflow":
        import tensorflow as tf

        f = tf.convert_to_tensor(fmap)
        with tf.GradientTape() as tape:
            tape.watch(f)
            probs = tf.cast(head(f, training=False), "float32")
            total = tf.reduce_sum(tf.math.log(tf.gather_nd(probs, np.stack([rows, classes], 1)) + 1e-12))
        return tape.gradient(total, f).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(f):
            probs = head(f, training=False).astype("float32")
            return jnp.sum(jnp.log(probs[rows, classes] + 1e-12))

        return np.asarray(jax.grad(total)(jnp.asarray(fmap)))
    if backend == "torch":
        import torch

        f = torch.tensor(fmap, requires_grad=True)
        probs = head(f, training=False).float()
        torch.log(probs[rows, classes] + 1e-12).sum().backward()
        return f.grad.detach().cpu().numpy()
    raise ValueError(f"Grad-CAM supports the tensorflow, jax and torch backends, not {backend!r}")


def head_on_map(head: keras.Model, map_shape: tuple[int, ...]) -> keras.Model:
    """A classifier's head alone (pooled features -> probabilities: what a trial on a frozen backbone trains) behind
    the pooling of the backbone's feature map: the whole classifier's map -> probabilities part, for Grad-CAM from a
    feature map computed apart (``search.sweep.features`` keeps those of the report's example images)."""
    inputs = keras.Input(map_shape, name="feature_map")
    pooled = keras.layers.GlobalAveragePooling2D(name=FEATURES)(inputs)
    return keras.Model(inputs, head(pooled), name=f"{head.name}_map_head")


def gradcam(model: keras.Model, images: np.ndarray, classes: np.ndarray | int | None = None) -> np.ndarray:
    """Heatmaps (float32 N×H×W in [0, 1]) of uint8 RGB images (N×H×W×3) for ``classes`` (one per image, one for
    all, or None: each image's predicted class)."""
    extractor, head = split_at_map(model)
    x = np.asarray(images, dtype="float32")
    fmap = keras.ops.convert_to_numpy(extractor(x, training=False))
    return gradcam_of_map(head, fmap, x.shape[1:3], classes)


def gradcam_of_map(
    head: keras.Model, fmap: np.ndarray, size: tuple[int, int], classes: np.ndarray | int | None = None
) -> np.ndarray:
    """``gradcam`` from the feature maps ``fmap`` (N×h×w×K) of images of ``size`` (H, W), through ``head`` (map ->
    probabilities: ``split_at_map``'s or ``head_on_map``'s)."""
    fmap = np.asarray(fmap, dtype="float32")
    if classes is None:
        classes = keras.ops.convert_to_numpy(head(fmap, training=False)).argmax(-1)
    classes = np.broadcast_to(np.asarray(classes, dtype=np.int64), (len(fmap),)).copy()
    grads = _log_prob_gradients(head, fmap, classes)
    weights = grads.mean(axis=(1, 2), keepdims=True)  # α_k per image and channel
    cams = np.maximum((weights * fmap).sum(-1), 0)
    out = np.empty((len(fmap), *size), np.float32)
    for i, cam in enumerate(cams):
        up = cv2.resize(cam.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        top = up.max()
        out[i] = up / top if top > 0 else 0.0
    return out


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image (uint8 RGB) with its heatmap ([0, 1], any size) blended on top in the jet colour map."""
    heat = cv2.resize(np.asarray(heatmap, np.float32), (image.shape[1], image.shape[0]))
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.asarray(image, np.uint8), 1 - alpha, colours, alpha, 0)
