"""What a network can see and what it costs: parameters, FLOPs, output stride, receptive field, and the size of
the objects in the masks it must see whole. Preflight reports them; the memory plan reads the layer sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Leaf:
    layer: object            # a keras layer that holds no other layers
    input_shape: tuple       # (batch, ...) of its (first) input
    output_shape: tuple      # (batch, ...) of its output (the sum of sizes when it has several)
    output_elements: int     # per image
    block: str | None        # the RecomputedBlock (train.remat) it runs inside, else None


def _elements(shape) -> int:
    return int(np.prod([int(d) for d in shape[1:]]))


def leaf_layers(model) -> list[Leaf]:
    """Every computing layer of `model` in graph order, nested models (keras.applications encoders) and
    recomputed blocks opened up. Input layers are left out."""
    import keras

    from segpipe.training.model import RecomputedBlock

    leaves = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            leaves.extend(leaf_layers(layer))
        elif isinstance(layer, RecomputedBlock):
            shape = tuple(layer.input.shape)
            for inner in layer.inner:
                out = tuple(inner.compute_output_shape(shape))
                leaves.append(Leaf(inner, shape, out, _elements(out), layer.name))
                shape = out
        else:
            inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
            leaves.append(Leaf(layer, tuple(inputs[0].shape), tuple(outputs[0].shape),
                               sum(_elements(o.shape) for o in outputs), None))
    return leaves


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, frozen) parameter counts; frozen includes BatchNorm's moving statistics."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return trainable, sum(int(np.prod(w.shape)) for w in model.weights) - trainable


def flops_per_image(model) -> int:
    """Floating-point operations of one forward pass per image: 2 x the multiply-adds of the convolutions and
    dense layers (normalisation, activations and pooling add a few per element: ignored, < 2% here)."""
    import keras

    total = 0
    for leaf in leaf_layers(model):
        layer = leaf.layer
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += 2 * kh * kw * leaf.output_elements
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            kh, kw = layer.kernel_size
            total += 2 * kh * kw * _elements(leaf.input_shape) * layer.filters
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            fan_in = int(leaf.input_shape[-1]) // layer.groups
            total += 2 * kh * kw * fan_in * leaf.output_elements
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(leaf.input_shape[-1]) * leaf.output_elements
    return int(total)


def output_stride(model) -> int:
    """Input side / the smallest feature map's side: how coarse the bottleneck sees the image."""
    input_side = int(model.input_shape[1])
    smallest = min(int(leaf.output_shape[1]) for leaf in leaf_layers(model) if len(leaf.output_shape) == 4)
    return input_side // max(1, smallest)


def receptive_field(build, *, side: int, seed: int = 0) -> tuple[int, bool]:
    """Measured receptive field of the centre output pixel, in input pixels: (extent, reached the input's edge).

    The extent is the bounding box of the input pixels with a non-zero gradient of the centre output, over
    three random inputs (ReLU and max-pooling zero some paths for one input, rarely the same ones thrice).

    Args:
        build: a function side -> a keras.Model of that square input size (the network to measure).
        side: the input side to measure at; the answer is at most this (then `reached the edge` is True).
    """
    import tensorflow as tf

    model = build(side)
    channels = int(model.input_shape[-1])
    images = tf.random.stateless_uniform((3, side, side, channels), seed=(seed, 1))
    with tf.GradientTape() as tape:
        tape.watch(images)
        output = model(images, training=False)
        centre = tf.reduce_sum(output[:, side // 2, side // 2, :])
    touched = np.any(tape.gradient(centre, images).numpy() != 0, axis=(0, 3))
    rows, cols = np.nonzero(touched)
    if not len(rows):
        return 0, False
    extent = int(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
    at_edge = rows.min() == 0 or cols.min() == 0 or rows.max() == side - 1 or cols.max() == side - 1
    return extent, bool(at_edge)


def object_sizes(masks, *, num_classes: int, scales) -> dict[int, np.ndarray]:
    """Sizes of the connected regions of each class in the masks, in network-input pixels.

    A region's size is the smaller of its bounding box's longer side and 4 x area / boundary length: a compact
    region's diameter, about twice a thin structure's width. A network of membranes or vessels spans the image,
    but what the receptive field must hold is its width (with context), not its extent.

    Args:
        masks: iterable of uint8 class-id arrays (H, W) (255 = void, not an object).
        num_classes: 1 = binary (objects of class 1); else every class id 0..num_classes-1 (class 0 of a
            multi-class set, e.g. sky in street scenes, is a class like the others).
        scales: one factor per mask, native pixels -> network-input pixels (resize: input / native side).

    Returns:
        {class id: float array (regions, 2): each connected region's size and area, in network-input pixels}.
    """
    from scipy import ndimage

    from segpipe.evaluation.metrics import class_boundary

    classes = [1] if num_classes == 1 else list(range(num_classes))
    sizes: dict[int, list[float]] = {k: [] for k in classes}
    for mask, scale in zip(masks, scales):
        for class_id in classes:
            inside = mask == class_id
            regions, count = ndimage.label(inside, structure=np.ones((3, 3)))  # 8-connected
            # boundary: region pixels with a 4-neighbour outside it (the image border is not a boundary)
            edge = class_boundary(inside) & inside
            areas = np.bincount(regions.ravel(), minlength=count + 1)[1:]
            perimeters = np.bincount(regions[edge], minlength=count + 1)[1:]
            for (rows, cols), area, perimeter in zip(ndimage.find_objects(regions), areas, perimeters):
                extent = max(rows.stop - rows.start, cols.stop - cols.start)
                size = min(extent, 4 * area / max(1, perimeter))
                sizes[class_id].append((size * float(scale), area * float(scale) ** 2))
    return {k: np.asarray(v, np.float64).reshape(-1, 2) for k, v in sizes.items()}


def typical_size(regions: np.ndarray, quantile: float = 0.5) -> float:
    """The size of the region that a pixel belongs to, at `quantile` over the pixels (area-weighted): the
    size of what the network must see, not of the many specks a mask also holds."""
    order = np.argsort(regions[:, 0])
    extents, areas = regions[order, 0], regions[order, 1]
    cumulative = np.cumsum(areas) / areas.sum()
    return float(extents[min(len(extents) - 1, np.searchsorted(cumulative, quantile))])


def resize_ceiling(masks, *, size: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """What the resized network input costs before any learning: the score of a perfect network.

    Each mask is resized to the network input `size` as training resizes it (nearest), its one-hot
    resized back to the mask's size as evaluate resizes the probabilities (bilinear) and decided (binary:
    >= 0.5; else the most probable class: `to_class_ids`), then scored against the mask, void excluded.

    Args:
        masks: iterable of uint8 class-id arrays (H, W) (255 = void).
        size: (height, width) of the network input.
        num_classes: 1 = binary.

    Returns:
        (intersections, unions) per class, pooled over the masks (binary: background, foreground), and each
        mask's own IoU (binary: of the foreground, images without any skipped; else the mean over the
        classes the mask holds).
    """
    import tensorflow as tf

    from segpipe.evaluation.metrics import class_confusion
    from segpipe.inference.prediction import to_class_ids

    classes = max(2, num_classes)
    intersections, unions, per_image = np.zeros(classes), np.zeros(classes), []
    for mask in masks:
        small = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
        one_hot = tf.one_hot(tf.cast(small, tf.int32), classes)  # void (255) is all zeros: no vote
        back = tf.image.resize(one_hot, mask.shape, method="bilinear").numpy()
        # Decided as evaluate decides: binary, the foreground's probability at threshold 0.5.
        decided = to_class_ids(back[..., 1:] if num_classes == 1 else back, threshold=0.5)
        labelled = mask != 255
        matrix = class_confusion(decided[labelled], mask[labelled], num_classes=classes)
        inter = np.diag(matrix)
        union = matrix.sum(0) + matrix.sum(1) - inter
        intersections += inter
        unions += union
        present = np.flatnonzero(matrix.sum(1))
        if num_classes == 1:
            if 1 in present:
                per_image.append(float(inter[1] / union[1]))
        elif len(present):
            per_image.append(float(np.mean(inter[present] / union[present])))
    return intersections, unions, per_image
