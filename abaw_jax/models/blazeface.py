"""MediaPipe's BlazeFace face detectors in Flax: network, anchors, decoding and weighted NMS.

Two detectors, with the weights of MediaPipe's ``.tflite`` files (Apache-2.0). Both ship with
the package, converted once by ``scripts/convert_blazeface.py`` into this project's weights
format (float16 as in the ``.tflite`` files, 1.0 MB and 0.2 MB, in ``blazeface_weights/`` with
MediaPipe's licence notice; each file's SHA-256 is checked at load): ``load()`` needs no file
and no extra package. ``load(path)`` still reads a ``.tflite`` file (parsed by
:mod:`abaw_jax.models.tflite`, which needs the ``tflite`` package).

- ``full_range`` (``face_detection_full_range.tflite``): 192 x 192 input, a BlazeBlock backbone
  down to 6 x 6 with an FPN-like top-down path back to 48 x 48, one anchor per cell: 2,304.
- ``short_range`` (``face_detection_short_range.tflite``): 128 x 128 input, single BlazeBlocks,
  heads at 16 x 16 (2 anchors per cell) and 8 x 8 (6 per cell): 896 anchors.

Each anchor gets 16 regressor values (box centre x, y, width, height, then 6 keypoints x, y:
the two eyes, nose tip, mouth centre and the two ear tragions; the first eye of each pair is the
subject's right one, on the image's left for a frontal face) and one score logit.

Post-processing follows MediaPipe's face detection graphs (``mediapipe/modules/face_detection``:
``face_detection.pbtxt`` and the per-model ``face_detection_{full,short}_range.pbtxt``), whose
options are, as published:

SsdAnchorsCalculator (common): ``min_scale 0.1484375, max_scale 0.75, anchor_offset_x 0.5,
anchor_offset_y 0.5, aspect_ratios 1.0, fixed_anchor_size true``; full range: ``input 192 x 192,
num_layers 1, strides [4], interpolated_scale_aspect_ratio 0.0``; short range: ``input
128 x 128, num_layers 4, strides [8, 16, 16, 16], interpolated_scale_aspect_ratio 1.0``. Layers
of equal stride share one grid; each layer adds one anchor per aspect ratio plus one
interpolated anchor when that ratio is > 0; with ``fixed_anchor_size`` every anchor has width
and height 1 and only its centre ``((x + 0.5) / grid_w, (y + 0.5) / grid_h)`` matters.

TensorsToDetectionsCalculator (common): ``num_classes 1, num_coords 16, box_coord_offset 0,
keypoint_coord_offset 4, num_keypoints 6, num_values_per_keypoint 2, sigmoid_score true,
score_clipping_thresh 100.0, reverse_output_order true`` (values in x, y, w, h order);
full range: ``num_boxes 2304, x_scale = y_scale = w_scale = h_scale = 192, min_score_thresh
0.6``; short range: ``num_boxes 896, scales 128, min_score_thresh 0.5``. Decoding: centre =
raw / scale * anchor size + anchor centre, size = raw / scale * anchor size (no exponential),
keypoints like the centre; score = sigmoid(clip(logit, -100, 100)); a detection is kept when
its score is >= min_score_thresh and its width and height are >= 0.

NonMaxSuppressionCalculator: ``min_suppression_threshold 0.3, overlap_type
INTERSECTION_OVER_UNION, algorithm WEIGHTED``, no limit on the number of detections. Weighted
NMS takes the best remaining detection, gathers every remaining detection whose IoU with it is
above 0.3 (itself included), and outputs the score-weighted mean of their box corners and
keypoints with the best one's score; the gathered ones are then removed.

Input: the frame is letterboxed to the square input (scaled to fit, centred, the border black
as MediaPipe's ``keep_aspect_ratio`` with ``BORDER_ZERO``), RGB mapped to [-1, 1].

Here everything is jitted and batched with static shapes: :func:`make_detector` returns a
function ``frames uint8 [B, H, W, 3] -> Detections`` with ``max_faces`` slots per frame
(``valid`` marks the used ones), so that detection runs on the same device as the encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from abaw_jax.models import tflite as tflite_lib

KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion",
             "left_ear_tragion")

# SsdAnchorsCalculator options shared by both graphs (module docstring).
MIN_SCALE = 0.1484375
MAX_SCALE = 0.75
ANCHOR_OFFSET = 0.5
SCORE_CLIP = 100.0
NMS_THRESHOLD = 0.3


@dataclasses.dataclass(frozen=True)
class Variant:
    """One BlazeFace model: input size, anchor layout and decoding options (module doc)."""

    name: str
    input_size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    num_anchors: int
    min_score_thresh: float


VARIANTS = {
    "full_range": Variant("full_range", 192, (4,), 0.0, 2304, 0.6),
    "short_range": Variant("short_range", 128, (8, 16, 16, 16), 1.0, 896, 0.5),
}


class BlazeFaceError(ValueError):
    """A model file that is not one of the BlazeFace detectors; the message names the file."""


# ---------------------------------------------------------------------------------------------
# Anchors.


def ssd_anchors(input_size: int, strides: Sequence[int], *,
                interpolated_scale_aspect_ratio: float = 1.0,
                aspect_ratios: Sequence[float] = (1.0,), min_scale: float = MIN_SCALE,
                max_scale: float = MAX_SCALE, fixed_anchor_size: bool = True) -> np.ndarray:
    """Anchors ``float32 [N, 4]`` (x_center, y_center, w, h; normalised) as SsdAnchorsCalculator.

    Consecutive layers with equal strides share one feature map; per cell, each of those
    layers contributes one anchor per aspect ratio and, when ``interpolated_scale_aspect_ratio``
    is > 0, one more at the geometric mean of its scale and the next layer's (1.0 after the last).
    """
    def scale(i: int) -> float:
        n = len(strides)
        return (min_scale + max_scale) / 2 if n == 1 else min_scale + (max_scale - min_scale) * i / (n - 1)

    out = []
    layer = 0
    while layer < len(strides):
        sizes = []   # (w, h) of the anchors of one cell
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            s = scale(last)
            for r in aspect_ratios:
                sizes.append((s * math.sqrt(r), s / math.sqrt(r)))
            if interpolated_scale_aspect_ratio > 0:
                nxt = 1.0 if last == len(strides) - 1 else scale(last + 1)
                r = interpolated_scale_aspect_ratio
                s2 = math.sqrt(s * nxt)
                sizes.append((s2 * math.sqrt(r), s2 / math.sqrt(r)))
            last += 1
        grid = math.ceil(input_size / strides[layer])
        for y in range(grid):
            for x in range(grid):
                for w, h in sizes:
                    if fixed_anchor_size:
                        w = h = 1.0
                    out.append(((x + ANCHOR_OFFSET) / grid, (y + ANCHOR_OFFSET) / grid, w, h))
        layer = last
    return np.asarray(out, np.float32)


def variant_anchors(variant: Variant) -> np.ndarray:
    """The anchors of one of the two detectors."""
    return ssd_anchors(variant.input_size, variant.strides,
                       interpolated_scale_aspect_ratio=variant.interpolated_scale_aspect_ratio)


# ---------------------------------------------------------------------------------------------
# The network.


class _Names:
    """Keras-style layer names in creation order (conv2d, conv2d_1, ...), as in the .tflite."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        n = self.counts.get(prefix, 0)
        self.counts[prefix] = n + 1
        return prefix if n == 0 else f"{prefix}_{n}"


def _upsample2x(x: jax.Array) -> jax.Array:
    """Bilinear 2x upsampling with half-pixel centres (TFLite RESIZE_BILINEAR, half_pixel_centers).

    Output pixel 2i samples input coordinate i - 0.25 and 2i + 1 samples i + 0.25, clamped to
    the image, so each is 3/4 of its own pixel plus 1/4 of the neighbour on that side.
    """
    def along(x, axis):
        prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis),
                                jax.lax.slice_in_dim(x, 0, x.shape[axis] - 1, axis=axis)], axis)
        nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, x.shape[axis], axis=axis),
                               jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)], axis)
        even = 0.75 * x + 0.25 * prev
        odd = 0.75 * x + 0.25 * nxt
        out = jnp.stack([even, odd], axis=axis + 1)
        shape = list(x.shape)
        shape[axis] *= 2
        return out.reshape(shape)
    return along(along(x, 1), 2)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (the .tflite convolutions): the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _taps(x: jax.Array, kernel: int, stride: int) -> list[jax.Array]:
    """The kernel*kernel shifted (and strided) views of SAME-padded ``x [B, H, W, C]``."""
    h, w = x.shape[1:3]
    (t, b), (l, r) = _same_pads(h, kernel, stride), _same_pads(w, kernel, stride)
    xp = jnp.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    oh, ow = -(-h // stride), -(-w // stride)
    return [jax.lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * stride + 1,
                                             j + (ow - 1) * stride + 1, xp.shape[3]),
                          (1, stride, stride, 1))
            for i in range(kernel) for j in range(kernel)]


class _Conv(nn.Module):
    """A convolution with the parameter layout of ``nn.Conv`` (kernel HWIO, bias), SAME padding,
    written as shifted views: a depthwise 3 x 3 kernel is nine multiply-adds, a 1 x 1 kernel a
    matmul, a larger dense kernel a matmul over the gathered taps.

    Why not ``lax.conv_general_dilated``: on XLA's CPU backend (jax 0.10) grouped (depthwise)
    convolutions ran about 10x slower than these fused element-wise loops and 1 x 1
    convolutions about 5x slower than the matmul (measured on 32 x 96 x 96 x 32); and the jitted
    short-range network built from grouped convolutions returned outputs off by tens of units
    while the same network unjitted, or written as below, matched the LiteRT interpreter.
    """

    features: int
    kernel: int = 1
    stride: int = 1
    depthwise: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        k = self.kernel
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (k, k, 1 if self.depthwise else cin, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if self.depthwise:
            taps = _taps(x, k, self.stride)
            y = taps[0] * kernel[0, 0, 0]
            for n, tap in enumerate(taps[1:], start=1):
                y = y + tap * kernel[n // k, n % k, 0]
        elif k == 1 and self.stride == 1:
            y = jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0], precision=self.precision)
        else:
            cols = jnp.concatenate(_taps(x, k, self.stride), axis=-1)   # tap-major, then channel
            y = jnp.einsum("bhwc,cd->bhwd", cols, kernel.reshape(k * k * cin, self.features),
                           precision=self.precision)
        return y + bias


class BlazeFace(nn.Module):
    """The BlazeFace network: images ``[B, S, S, 3]`` in [-1, 1] -> (regressors ``[B, N, 16]``,
    logits ``[B, N, 1]``), exactly the two outputs of the ``.tflite`` graph.

    Layer names follow the Keras names stored in the ``.tflite`` file, so :func:`load` maps
    weights by name and fails loudly on any mismatch.
    """

    variant: str = "full_range"
    precision: Any = None

    def _conv(self, names, x, features, kernel=1, stride=1, name="conv2d"):
        return _Conv(features, kernel, stride, precision=self.precision,
                     name=names(name))(x)

    def _dw(self, names, x, stride=1):
        return _Conv(x.shape[-1], 3, stride, depthwise=True,
                     precision=self.precision, name=names("depthwise_conv2d"))(x)

    def _skip(self, x, out_ch, stride):
        """The residual path: 2x2 max-pool when the block downsamples, zero channels appended."""
        if stride == 2:
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        if out_ch > x.shape[-1]:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, out_ch - x.shape[-1])))
        return x

    def _block(self, names, x, out_ch, stride=1):
        """Single BlazeBlock: depthwise 3x3 -> pointwise, plus the skip, then ReLU."""
        y = self._conv(names, self._dw(names, x, stride), out_ch)
        return nn.relu(self._skip(x, out_ch, stride) + y)

    def _double(self, names, x, mid_ch, out_ch, stride=1):
        """Double BlazeBlock: depthwise -> pointwise to mid_ch, ReLU, depthwise -> pointwise."""
        y = nn.relu(self._conv(names, self._dw(names, x, stride), mid_ch))
        y = self._conv(names, self._dw(names, y), out_ch)
        return nn.relu(self._skip(x, out_ch, stride) + y)

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        names = _Names()
        b = images.shape[0]
        if self.variant == "short_range":
            x = nn.relu(self._conv(names, images, 24, kernel=5, stride=2))
            for i, (ch, stride) in enumerate([(24, 1), (28, 1), (32, 2), (36, 1), (42, 1),
                                              (48, 2), (56, 1), (64, 1), (72, 1), (80, 1),
                                              (88, 1), (96, 2), (96, 1), (96, 1), (96, 1),
                                              (96, 1)]):
                x = self._block(names, x, ch, stride)
                if i == 10:
                    fine = x                       # 16 x 16 x 88
            coarse = x                             # 8 x 8 x 96
            conv = lambda t, ch, name: _Conv(ch, precision=self.precision,
                                             name=name)(t)
            c8, c16 = conv(fine, 2, "classificator_8"), conv(coarse, 6, "classificator_16")
            r8, r16 = conv(fine, 32, "regressor_8"), conv(coarse, 96, "regressor_16")
            logits = jnp.concatenate([c8.reshape(b, -1, 1), c16.reshape(b, -1, 1)], axis=1)
            regs = jnp.concatenate([r8.reshape(b, -1, 16), r16.reshape(b, -1, 16)], axis=1)
            return regs, logits
        if self.variant != "full_range":
            raise ValueError(f"unknown BlazeFace variant {self.variant!r}; known: {', '.join(VARIANTS)}")
        x = nn.relu(self._conv(names, images, 32, kernel=3, stride=2))    # 96 x 96
        stages = [[(8, 32, 1), (8, 32, 1)],
                  [(12, 48, 2), (12, 48, 1), (16, 64, 1)],                   # 48 x 48
                  [(24, 96, 2), (32, 128, 1), (32, 128, 1)],                 # 24 x 24
                  [(36, 144, 2), (48, 192, 1), (64, 256, 1)],                # 12 x 12
                  [(96, 384, 2), (96, 384, 1), (96, 384, 1), (96, 384, 1)]]  # 6 x 6
        features = []
        for stage in stages:
            for mid, out, stride in stage:
                x = self._double(names, x, mid, out, stride)
            features.append(x)
        # Top-down path: each level is ReLU(1x1 lateral) + upsampled ReLU(1x1 of the level
        # above), then double blocks; the top conv is created before the lateral one.
        for lateral, ch, mid, blocks in ((features[3], 96, 48, 2), (features[2], 64, 32, 2),
                                         (features[1], 48, 24, 1)):
            top = nn.relu(self._conv(names, x, ch))
            x = nn.relu(self._conv(names, lateral, ch)) + _upsample2x(top)
            for _ in range(blocks):
                x = self._double(names, x, mid, ch)
        logits = _Conv(1, precision=self.precision,
                       name="classifier_face_4")(x)
        regs = _Conv(16, precision=self.precision, name="regressor_face_4")(x)
        return regs.reshape(b, -1, 16), logits.reshape(b, -1, 1)


# ---------------------------------------------------------------------------------------------
# Weights.


def _variant_of(graph: tflite_lib.Graph) -> Variant:
    if len(graph.inputs) != 1:
        raise BlazeFaceError(f"{graph.path}: {len(graph.inputs)} inputs; BlazeFace has one image input")
    shape = graph.tensors[graph.inputs[0]].shape
    outputs = [graph.tensors[i].shape for i in graph.outputs]
    for v in VARIANTS.values():
        want = [(1, v.num_anchors, 16), (1, v.num_anchors, 1)]
        if shape == (1, v.input_size, v.input_size, 3) and sorted(outputs) == sorted(want):
            return v
    raise BlazeFaceError(
        f"{graph.path}: input {list(shape)} and outputs {[list(o) for o in outputs]} are not those "
        f"of a BlazeFace face detector (face_detection_full_range.tflite: input [1, 192, 192, 3], "
        f"outputs [1, 2304, 16] and [1, 2304, 1]; face_detection_short_range.tflite: 128 and 896)")


@dataclasses.dataclass
class Model:
    """A loaded detector: the Flax module, its variables, its variant and anchors."""

    module: BlazeFace
    variables: Any
    variant: Variant
    anchors: np.ndarray
    path: str


def load(path: str | os.PathLike | None = None, *, precision: Any = None) -> Model:
    """Loads a detector: the weights shipped with the package, or a file.

    `path`: None for the shipped full-range weights; ``"full_range"`` or ``"short_range"`` for
    either shipped variant; the path of a weights file of this project's format
    (:func:`write_weights`); or the path of ``face_detection_full_range.tflite`` /
    ``face_detection_short_range.tflite`` (needs the ``tflite`` package, see :func:`load_tflite`).
    """
    if path is None or str(path) in VARIANTS:
        return _model(*read_weights(shipped_path(str(path or DEFAULT_VARIANT)),
                                    digest=SHIPPED[str(path or DEFAULT_VARIANT)][1]),
                      precision=precision)
    path = pathlib.Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            head = f.read(len(WEIGHTS_MAGIC))
    except FileNotFoundError:
        raise BlazeFaceError(f"{path}: no such model file") from None
    except OSError as e:
        raise BlazeFaceError(f"{path}: cannot read the model file ({e.strerror})") from None
    if head == WEIGHTS_MAGIC:
        shipped = {shipped_path(v).resolve(): d for v, (_, d) in SHIPPED.items()}
        return _model(*read_weights(path, digest=shipped.get(path.resolve())), precision=precision)
    return load_tflite(path, precision=precision)


def _model(variant: Variant, params: dict, path: str, *, precision: Any = None) -> Model:
    module = BlazeFace(variant.name, precision=precision)
    size = variant.input_size
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    want = {layer: {k: v.shape for k, v in leaves.items()}
            for layer, leaves in shapes["params"].items()}
    got = {layer: {k: v.shape for k, v in leaves.items()} for layer, leaves in params.items()}
    if got != want:
        missing = sorted(set(want) - set(got)) or sorted(
            layer for layer in want if got.get(layer) != want[layer])
        raise BlazeFaceError(f"{path}: the weights do not fit the {variant.name} network "
                             f"(layers {missing[:3]} missing or of other shapes)")
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), {"params": params})
    return Model(module, variables, variant, variant_anchors(variant), str(path))


def load_tflite(path: str | os.PathLike, *, precision: Any = None) -> Model:
    """Loads ``face_detection_full_range.tflite`` or ``face_detection_short_range.tflite``.

    The variant is told from the file's input and output shapes; every convolution of the Flax
    network must find its kernel and bias in the file under its Keras name with the right shape,
    and every convolution weight in the file must be used, or BlazeFaceError names the file.
    Reading the flatbuffer needs the ``tflite`` package (``pip install 'abaw_jax[tflite]'``).
    """
    variant, params = tflite_params(path)
    return _model(variant, {k: {n: a.astype(np.float32) for n, a in v.items()}
                            for k, v in params.items()}, str(path), precision=precision)


def tflite_params(path: str | os.PathLike) -> tuple[Variant, dict[str, dict[str, np.ndarray]]]:
    """The variant and the Flax parameters ``{layer: {"kernel", "bias"}}`` stored in a
    ``.tflite`` file, in the file's own dtype (float16 for MediaPipe's files)."""
    graph = tflite_lib.read(path)
    variant = _variant_of(graph)
    consts = graph.constants()
    halves = {t.name: t.data for t in graph.tensors if t.data is not None}
    for op in graph.operators:   # the float16 source of each dequantized tensor
        if op.name == "DEQUANTIZE" and graph.tensors[op.inputs[0]].data is not None:
            halves[graph.tensors[op.outputs[0]].name] = graph.tensors[op.inputs[0]].data
    module = BlazeFace(variant.name)
    size = variant.input_size
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    params: dict[str, dict[str, np.ndarray]] = {}
    used = set()
    for layer, leaves in shapes["params"].items():
        kname, bname = f"{layer}/Kernel_dequantize", f"{layer}/Bias_dequantize"
        # Files without float16 weights hold the float32 kernel under the bare name.
        kname = kname if kname in consts else f"{layer}/Kernel"
        bname = bname if bname in consts else f"{layer}/Bias"
        if kname not in consts or bname not in consts:
            raise BlazeFaceError(f"{graph.path}: no weights for layer {layer!r} of the "
                                 f"{variant.name} network")
        kernel = np.asarray(halves[kname])
        want = leaves["kernel"].shape
        if len(want) == 4 and want[2] == 1 and kernel.shape[0] == 1:
            kernel = kernel.reshape(want)                  # depthwise [1, H, W, C] -> [H, W, 1, C]
        else:
            kernel = kernel.transpose(1, 2, 3, 0)          # OHWI -> HWIO
        bias = np.asarray(halves[bname])
        if kernel.shape != want or bias.shape != leaves["bias"].shape:
            raise BlazeFaceError(
                f"{graph.path}: layer {layer!r} has kernel {list(kernel.shape)} / bias "
                f"{list(bias.shape)} in the file, the {variant.name} network needs "
                f"{list(want)} / {list(leaves['bias'].shape)}")
        params[layer] = {"kernel": np.ascontiguousarray(kernel), "bias": bias}
        used.add(layer)
    # The float16 source of a dequantized kernel is listed under the bare name too.
    unused = sorted(k for k in consts if k.endswith(("/Kernel_dequantize", "/Kernel"))
                    and k.split("/")[0] not in used)
    if unused:
        raise BlazeFaceError(f"{graph.path}: weights {unused[:3]} have no place in the "
                             f"{variant.name} network; not a BlazeFace file this module knows")
    return variant, params


# ---------------------------------------------------------------------------------------------
# The shipped weights: this project's file format.
#
# A weights file is ``WEIGHTS_MAGIC``, the length of a JSON header (4 bytes, little-endian), the
# header (UTF-8), then the arrays' bytes back to back, little-endian, C order. The header holds
# the format version, the variant, the source file's name and SHA-256, and per array its name
# ("<layer>/kernel" or "<layer>/bias"), dtype and shape, in the order of the data.
# ``scripts/convert_blazeface.py`` writes the shipped files from MediaPipe's ``.tflite`` files;
# the float16 values are those of the ``.tflite`` files, bit for bit.

WEIGHTS_MAGIC = b"ABAWBF1\n"
WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "blazeface_weights"
DEFAULT_VARIANT = "full_range"
# {variant: (file in WEIGHTS_DIR, SHA-256 of the file)}, checked at every load.
SHIPPED = {
    "full_range": ("face_detection_full_range.abw",
                   "2db866b9569f79af6c6dc7d536110ad7e0709174320d8e8fa66f3f59eaf88cca"),
    "short_range": ("face_detection_short_range.abw",
                    "df123b476a7951dc3cf39658519f0d0aeeb1b01b7feb172dbb1933f602de600a"),
}


def shipped_path(variant: str = DEFAULT_VARIANT) -> pathlib.Path:
    """The file of a shipped variant ("full_range" or "short_range")."""
    if variant not in SHIPPED:
        raise BlazeFaceError(f"no shipped BlazeFace variant {variant!r}; choose "
                             f"{' or '.join(SHIPPED)}")
    return WEIGHTS_DIR / SHIPPED[variant][0]


def write_weights(path: str | os.PathLike, variant: Variant,
                  params: dict[str, dict[str, np.ndarray]], *, source: str = "",
                  source_sha256: str = "") -> str:
    """Writes parameters in this project's format (module section above); returns its SHA-256.

    The bytes depend only on the arguments, so converting the same file twice gives the same
    digest.
    """
    arrays = []
    for layer in sorted(params):
        for name in ("kernel", "bias"):
            a = np.asarray(params[layer][name])
            if a.dtype not in (np.float16, np.float32):
                raise BlazeFaceError(f"{layer}/{name}: dtype {a.dtype}; float16 or float32 only")
            arrays.append((f"{layer}/{name}", a.astype(a.dtype.newbyteorder("<"))))
    header = {"format": 1, "variant": variant.name, "source": source,
              "source_sha256": source_sha256,
              "arrays": [{"name": n, "dtype": str(a.dtype.name), "shape": list(a.shape)}
                         for n, a in arrays]}
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob = b"".join([WEIGHTS_MAGIC, len(head).to_bytes(4, "little"), head,
                     *(np.ascontiguousarray(a).tobytes() for _, a in arrays)])
    pathlib.Path(path).write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


def read_weights(path: str | os.PathLike, *, digest: str | None = None
                 ) -> tuple[Variant, dict[str, dict[str, np.ndarray]], str]:
    """(variant, parameters, path) of a file of this project's format; with `digest`, the
    file's SHA-256 must equal it (a damaged or replaced file is a BlazeFaceError naming it)."""
    path = pathlib.Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise BlazeFaceError(f"{path}: no such weights file (a broken installation? reinstall "
                             f"abaw_jax)") from None
    if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
        raise BlazeFaceError(f"{path}: SHA-256 {hashlib.sha256(blob).hexdigest()[:16]}... is "
                             f"not that of the shipped weights ({digest[:16]}...): the file is "
                             f"damaged; reinstall abaw_jax")
    try:
        if blob[:len(WEIGHTS_MAGIC)] != WEIGHTS_MAGIC:
            raise ValueError("no ABAWBF1 header")
        start = len(WEIGHTS_MAGIC) + 4
        size = int.from_bytes(blob[len(WEIGHTS_MAGIC):start], "little")
        header = json.loads(blob[start:start + size])
        variant = VARIANTS[header["variant"]]
        offset = start + size
        params: dict[str, dict[str, np.ndarray]] = {}
        for item in header["arrays"]:
            dtype = np.dtype(item["dtype"]).newbyteorder("<")
            n = int(np.prod(item["shape"], dtype=np.int64)) * dtype.itemsize
            if offset + n > len(blob):
                raise ValueError("truncated")
            a = np.frombuffer(blob, dtype, count=n // dtype.itemsize, offset=offset)
            layer, _, name = item["name"].rpartition("/")
            params.setdefault(layer, {})[name] = a.reshape(item["shape"]).astype(
                dtype.newbyteorder("="))
            offset += n
        if offset != len(blob):
            raise ValueError(f"{len(blob) - offset} bytes after the last array")
    except (ValueError, KeyError, TypeError) as e:
        raise BlazeFaceError(f"{path}: not a readable BlazeFace weights file ({e})") from None
    return variant, params, str(path)


# ---------------------------------------------------------------------------------------------
# Decoding and weighted NMS.


class Detections(NamedTuple):
    """Per frame, `max_faces` slots, best first: boxes ``[..., K, 4]`` (xmin, ymin, xmax, ymax),
    keypoints ``[..., K, 6, 2]`` (x, y), scores ``[..., K]`` and valid ``[..., K]`` (bool)."""

    boxes: jax.Array
    keypoints: jax.Array
    scores: jax.Array
    valid: jax.Array


def decode(regressors: jax.Array, logits: jax.Array, anchors: jax.Array, scale: float,
           min_score: float) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Boxes ``[..., N, 4]`` (xmin, ymin, xmax, ymax), keypoints ``[..., N, 6, 2]``, scores and
    kept ``[..., N]`` in the model's normalised input frame (TensorsToDetectionsCalculator)."""
    ax, ay, aw, ah = (anchors[:, i] for i in range(4))
    r = regressors / scale
    xc = r[..., 0] * aw + ax
    yc = r[..., 1] * ah + ay
    w = r[..., 2] * aw
    h = r[..., 3] * ah
    boxes = jnp.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=-1)
    kp = r[..., 4:16].reshape(*r.shape[:-1], 6, 2)
    kp = kp * jnp.stack([aw, ah], -1)[:, None, :] + jnp.stack([ax, ay], -1)[:, None, :]
    scores = jax.nn.sigmoid(jnp.clip(logits[..., 0], -SCORE_CLIP, SCORE_CLIP))
    kept = (scores >= min_score) & (w >= 0) & (h >= 0)
    return boxes, kp, scores, kept


def _iou_with(boxes: jax.Array, box: jax.Array) -> jax.Array:
    """IoU of ``boxes [N, 4]`` with one ``box [4]``; 0 where they do not intersect."""
    iw = jnp.minimum(boxes[:, 2], box[2]) - jnp.maximum(boxes[:, 0], box[0])
    ih = jnp.minimum(boxes[:, 3], box[3]) - jnp.maximum(boxes[:, 1], box[1])
    inter = jnp.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def weighted_nms(boxes: jax.Array, keypoints: jax.Array, scores: jax.Array, kept: jax.Array,
                 max_out: int, threshold: float = NMS_THRESHOLD) -> Detections:
    """MediaPipe's WEIGHTED non-maximum suppression of one frame's detections, ``max_out`` slots.

    ``boxes [N, 4]``, ``keypoints [N, 6, 2]``, ``scores [N]``, ``kept [N]`` (only kept ones
    take part). Outputs are in decreasing score order; unused slots have valid False and zeros.
    """
    n = scores.shape[0]
    flat_kp = keypoints.reshape(n, -1)

    def step(remaining, _):
        s = jnp.where(remaining, scores, -jnp.inf)
        i = jnp.argmax(s)
        ok = remaining[i]
        cand = remaining & ((_iou_with(boxes, boxes[i]) > threshold) | (jnp.arange(n) == i))
        w = jnp.where(cand, scores, 0.0)
        total = jnp.maximum(w.sum(), 1e-30)
        box = (w[:, None] * boxes).sum(0) / total
        kp = (w[:, None] * flat_kp).sum(0) / total
        out = (jnp.where(ok, box, 0.0), jnp.where(ok, kp, 0.0), jnp.where(ok, scores[i], 0.0), ok)
        return remaining & ~cand, out

    _, (b, k, s, v) = jax.lax.scan(step, kept, None, length=max_out)
    return Detections(b, k.reshape(max_out, *keypoints.shape[1:]), s, v)


# ---------------------------------------------------------------------------------------------
# Frames in, detections out.


def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
    """``(scale, new_h, new_w, top, left)``: the frame scaled by `scale` to ``new_h x new_w``
    fits the ``size`` square with its top-left corner at ``(top, left)``."""
    scale = size / max(height, width)
    new_h = max(1, round(height * scale))
    new_w = max(1, round(width * scale))
    return scale, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2


def letterbox(frames: jax.Array, size: int) -> jax.Array:
    """``uint8 [B, H, W, 3]`` RGB -> ``float32 [B, size, size, 3]`` in [-1, 1], letterboxed.

    Downscaling is area-like: first the mean of f x f pixel blocks (f the integer part of the
    reduction), then antialiased linear resampling of that small image by the remaining factor
    (between 1/2 and 1), with the exact scale, so pixel geometry is that of
    :func:`letterbox_geometry`. The block mean is what makes this cheap: resampling the full
    frame directly with ``jax.image.resize`` cost as much as a third of the detector on a CPU.
    """
    b, h, w, _ = frames.shape
    scale, nh, nw, top, left = letterbox_geometry(h, w, size)
    x = frames.astype(jnp.float32)
    f = max(1, int(1.0 / scale))
    if f > 1:
        hf, wf = h // f, w // f
        x = x[:, :hf * f, :wf * f].reshape(b, hf, f, wf, f, 3).mean(axis=(2, 4))
    if (nh, nw) != x.shape[1:3] or f * scale != 1.0:
        r = scale * f
        x = jax.image.scale_and_translate(x, (b, nh, nw, 3), (1, 2), jnp.array([r, r]),
                                          jnp.zeros(2), method="linear", antialias=True)
    x = x / 127.5 - 1.0
    return jnp.pad(x, ((0, 0), (top, size - nh - top), (left, size - nw - left), (0, 0)),
                   constant_values=-1.0)


class Detector:
    """A jitted BlazeFace detector with its weights (see :func:`make_detector`).

    ``detector(frames)``: ``uint8 [B, H, W, 3]`` RGB frames -> :class:`Detections` in frame
    pixels; letterboxing, the network, decoding and NMS all run in one jitted function on the
    default device. ``detector.from_letterboxed(images, (H, W))``: the same from frames already
    letterboxed to ``uint8 [B, S, S, 3]`` (see :func:`letterbox_geometry`) by the caller, which is
    cheaper on a CPU where a cv2 area resize beats XLA's resampling; the geometry of the original
    frame size maps the detections back to its pixels.
    """

    def __init__(self, model: Model, max_faces: int, min_score: float, nms_threshold: float):
        self.model = model
        self.size = model.variant.input_size
        self.max_faces = max_faces
        self.min_score = min_score
        self.nms_threshold = nms_threshold
        anchors = jnp.asarray(model.anchors)
        module, size = model.module, self.size

        def core(variables, images, geometry):
            # geometry [B, 3]: scale, top, left of each image's letterbox (traced, so frames of
            # any size share one compiled function once letterboxed).
            regs, logits = module.apply(variables, images)
            boxes, kps, scores, kept = decode(regs, logits, anchors, float(size), min_score)
            dets = jax.vmap(lambda b, k, s, m: weighted_nms(b, k, s, m, max_faces, nms_threshold))(
                boxes, kps, scores, kept)
            # Normalised letterbox coordinates -> frame pixels.
            scale = geometry[:, 0, None, None, None]            # [B, 1, 1, 1]
            offset = geometry[:, None, None, 2:0:-1]            # [B, 1, 1, 2]: (left, top)
            to_px = lambda p: (p * size - offset) / scale       # p: [B, K, n, 2]
            bx = to_px(dets.boxes.reshape(*dets.boxes.shape[:-1], 2, 2)).reshape(dets.boxes.shape)
            kp = to_px(dets.keypoints)
            return Detections(jnp.where(dets.valid[..., None], bx, 0.0),
                              jnp.where(dets.valid[..., None, None], kp, 0.0), dets.scores,
                              dets.valid)

        def from_frames(variables, frames):
            scale, _, _, top, left = letterbox_geometry(*frames.shape[1:3], size)
            geometry = jnp.tile(jnp.array([[scale, top, left]], jnp.float32), (frames.shape[0], 1))
            return core(variables, letterbox(frames, size), geometry)

        self._frames = jax.jit(from_frames)
        self._boxed = jax.jit(lambda v, images, geometry: core(
            v, images.astype(jnp.float32) / 127.5 - 1.0, geometry))
        self._compiled: dict = {}
        self.compile_seconds = 0.0   # total jit compile time so far (ahead of time, per shape)

    def _run(self, fn, *args):
        """Runs a jitted function compiled ahead of time per input shape, timing the compile."""
        key = (id(fn), *((a.shape, str(a.dtype)) for a in args[1:]))
        if key not in self._compiled:
            import time
            t0 = time.perf_counter()
            self._compiled[key] = fn.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - t0
        return self._compiled[key](*args)

    def __call__(self, frames) -> Detections:
        """Detections of ``uint8 [B, H, W, 3]`` RGB frames, in frame pixels."""
        return self._run(self._frames, self.model.variables, jnp.asarray(frames))

    def from_letterboxed(self, images, frame_hw) -> Detections:
        """Detections of ``uint8 [B, S, S, 3]`` letterboxed images of frames of size
        `frame_hw`: one ``(H, W)`` for all, or ``[B, 2]``, one per image."""
        hw = np.broadcast_to(np.asarray(frame_hw, np.int64).reshape(-1, 2), (len(images), 2))
        rows = []
        for h, w in hw:
            scale, _, _, top, left = letterbox_geometry(int(h), int(w), self.size)
            rows.append((scale, top, left))
        geometry = np.array(rows, np.float32)
        return self._run(self._boxed, self.model.variables, jnp.asarray(images), jnp.asarray(geometry))


def make_detector(model: Model, *, max_faces: int = 16, min_score: float | None = None,
                  nms_threshold: float = NMS_THRESHOLD) -> Detector:
    """A jitted detector: ``frames uint8 [B, H, W, 3] -> Detections`` in frame pixels.

    `min_score` defaults to the graph's min_score_thresh (full range 0.6, short range 0.5).
    One compile per frame size and batch size.
    """
    thresh = model.variant.min_score_thresh if min_score is None else float(min_score)
    return Detector(model, max_faces, thresh, nms_threshold)
