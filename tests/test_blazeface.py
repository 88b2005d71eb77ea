"""abaw_jax.models.blazeface and .tflite against the LiteRT interpreter on real frames."""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax.models import blazeface as bf
from abaw_jax.models import tflite as tflite_lib

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = SHARED / "models" / "mediapipe"
VIDEO = SHARED / "videos" / "fer_woman2.mp4"
CKPLUS = SHARED / "ckplus48"
VARIANTS = ("full_range", "short_range")


def _model_path(variant: str) -> pathlib.Path:
    path = MODELS / f"face_detection_{variant}.tflite"
    if not path.is_file():
        pytest.skip(f"BlazeFace model not found at {path}")
    return path


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Four real RGB frames: three of fer_woman2.mp4 and a CK+ face on a wider canvas."""
    cv2 = pytest.importorskip("cv2", reason="needs opencv-python-headless (the 'video' extra)")
    if not VIDEO.is_file() or not CKPLUS.is_dir():
        pytest.skip(f"real frames not found under {SHARED}")
    cap = cv2.VideoCapture(str(VIDEO))
    out = []
    for i in range(300):
        ok, f = cap.read()
        assert ok
        if i in (0, 150, 299):
            out.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    face = cv2.imread(str(sorted((CKPLUS / "surprise").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    canvas = np.full(out[0].shape[:2], 128, np.uint8)
    canvas[60:260, 200:400] = cv2.resize(face, (200, 200), interpolation=cv2.INTER_CUBIC)
    out.append(cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB))
    return np.stack(out)


def _litert(path: pathlib.Path, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(regressors [1, N, 16], logits [1, N, 1]) of the LiteRT interpreter for one input."""
    litert = pytest.importorskip("ai_edge_litert.interpreter",
                                 reason="needs ai-edge-litert (the 'test' extra)")
    interp = litert.Interpreter(model_path=str(path))   # a fresh one: outputs are not copied
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], image)
    interp.invoke()
    outs = [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]
    regs = next(o for o in outs if o.shape[-1] == 16)
    logits = next(o for o in outs if o.shape[-1] == 1)
    return regs, logits


@pytest.mark.parametrize("source", ("tflite", "shipped"))
@pytest.mark.parametrize("variant", VARIANTS)
def test_raw_outputs_equal_the_litert_interpreter(variant, source, frames):
    path = _model_path(variant)
    model = bf.load(path if source == "tflite" else variant)
    size = model.variant.input_size
    images = np.asarray(bf.letterbox(jnp.asarray(frames), size))
    apply = jax.jit(model.module.apply)
    regs, logits = (np.asarray(a) for a in apply(model.variables, images))
    for i, image in enumerate(images):
        want_r, want_l = _litert(path, image[None])
        # float32 throughout, summed in another order over some 40 layers: differences of a
        # few units in the 5th digit of the output's range (seen: up to 2e-5 relative).
        np.testing.assert_allclose(regs[i:i + 1], want_r, rtol=0,
                                   atol=1e-5 * np.abs(want_r).max() + 1e-4, err_msg=f"frame {i}")
        np.testing.assert_allclose(logits[i:i + 1], want_l, rtol=0,
                                   atol=1e-5 * np.abs(want_l).max() + 1e-4, err_msg=f"frame {i}")
        # Every test frame shows a face that the graph's threshold keeps (score >= 0.6).
        assert want_l.max() > math.log(0.6 / 0.4), f"frame {i}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_weights_are_those_of_the_tflite_files(variant):
    """The shipped float16 values are the .tflite file's, bit for bit (tolerance 0), so the
    network's raw outputs are those of the .tflite loader exactly; the LiteRT comparison above
    runs both sources."""
    tflite_model = bf.load_tflite(_model_path(variant))
    shipped = bf.load(variant)
    assert shipped.variant == tflite_model.variant
    assert shipped.path == str(bf.shipped_path(variant))
    want = dict(jax.tree_util.tree_leaves_with_path(tflite_model.variables))
    got = dict(jax.tree_util.tree_leaves_with_path(shipped.variables))
    assert got.keys() == want.keys() and len(got) == (178 if variant == "full_range" else 74)
    for key, value in want.items():
        assert got[key].dtype == value.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=str(key))


def test_shipped_weights_load_without_the_tflite_package_and_about_1_mb():
    """The default detector needs no file, variable or extra package: `tflite` is blocked."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['tflite'] = None\n"
            "from abaw_jax.models import blazeface as bf\n"
            "m = bf.load(); print(m.variant.name, m.path)\n")
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["full_range", str(bf.shipped_path("full_range"))]
    sizes = {v: bf.shipped_path(v).stat().st_size for v in bf.SHIPPED}
    assert 0.9e6 < sizes["full_range"] < 1.1e6 and 0.15e6 < sizes["short_range"] < 0.25e6
    notice = (bf.WEIGHTS_DIR / "NOTICE").read_text()
    assert "Apache License, Version 2.0" in notice and "MediaPipe" in notice
    assert (bf.WEIGHTS_DIR / "LICENSE-2.0.txt").read_text().count("Apache License") >= 2


def test_shipped_files_are_package_data():
    """pyproject's package-data patterns take every file of the weights folder (a wheel built
    from the repository carries them)."""
    import fnmatch
    import tomllib
    root = pathlib.Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["abaw_jax.models"]
    here = sorted(p.relative_to(bf.WEIGHTS_DIR.parent).as_posix()
                  for p in bf.WEIGHTS_DIR.iterdir())
    assert len(here) == 4
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in here), (here, patterns)


def test_a_damaged_shipped_file_is_refused_by_its_digest(tmp_path, monkeypatch):
    originals = {v: bf.shipped_path(v).read_bytes() for v in bf.SHIPPED}
    for variant, (name, _) in bf.SHIPPED.items():
        blob = bytearray(originals[variant])
        blob[-3] ^= 0x01                      # one bit of the last bias
        (tmp_path / name).write_bytes(bytes(blob))
    monkeypatch.setattr(bf, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(bf.BlazeFaceError, match=r"full_range.abw: SHA-256 .* damaged"):
        bf.load()
    with pytest.raises(bf.BlazeFaceError, match=r"short_range.abw: SHA-256 .* damaged"):
        bf.load(tmp_path / "face_detection_short_range.abw")
    # Outside the shipped folder a weights file is read without a digest; a cut one is named.
    other = tmp_path / "other.abw"
    other.write_bytes(originals["short_range"][:5000])
    with pytest.raises(bf.BlazeFaceError, match=rf"{other}: not a readable BlazeFace weights file"):
        bf.load(other)
    other.write_bytes(originals["short_range"])
    assert bf.load(other).variant.name == "short_range"


def test_conversion_script_reproduces_the_shipped_files():
    _model_path("full_range"), _model_path("short_range")
    from scripts import convert_blazeface
    assert convert_blazeface.main(["--models", str(MODELS), "--check"]) == 0


# ---------------------------------------------------------------------------------------------
# An independent decoding of the interpreter's outputs, written from MediaPipe's calculators
# one anchor and one detection at a time (plain Python, no shared code with the module).


def _reference_anchors(input_size, strides, interpolated):
    anchors = []
    i = 0
    while i < len(strides):
        j = i
        per_cell = 0
        while j < len(strides) and strides[j] == strides[i]:
            per_cell += 1 + (1 if interpolated > 0 else 0)
            j += 1
        grid = int(math.ceil(input_size / strides[i]))
        for y in range(grid):
            for x in range(grid):
                for _ in range(per_cell):
                    anchors.append(((x + 0.5) / grid, (y + 0.5) / grid))
        i = j
    return anchors


def _reference_detections(regs, logits, variant: bf.Variant, frame_hw):
    size = variant.input_size
    anchors = _reference_anchors(size, variant.strides, variant.interpolated_scale_aspect_ratio)
    assert len(anchors) == variant.num_anchors == regs.shape[0]
    dets = []
    for (ax, ay), r, l in zip(anchors, regs, logits):
        score = 1 / (1 + math.exp(-min(max(float(l[0]), -100.0), 100.0)))
        if score < variant.min_score_thresh:
            continue
        xc, yc = r[0] / size + ax, r[1] / size + ay
        w, h = r[2] / size, r[3] / size
        if w < 0 or h < 0:
            continue
        kps = [(r[4 + 2 * k] / size + ax, r[5 + 2 * k] / size + ay) for k in range(6)]
        dets.append((score, [xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], kps))
    dets.sort(key=lambda d: -d[0])

    def iou(a, b):
        iw = min(a[2], b[2]) - max(a[0], b[0])
        ih = min(a[3], b[3]) - max(a[1], b[1])
        if iw <= 0 or ih <= 0:
            return 0.0
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    out = []
    remaining = dets
    while remaining:
        top = remaining[0]
        cands = [d for d in remaining if iou(d[1], top[1]) > 0.3]
        remaining = [d for d in remaining if iou(d[1], top[1]) <= 0.3]
        total = sum(d[0] for d in cands)
        box = [sum(d[0] * d[1][c] for d in cands) / total for c in range(4)]
        kps = [(sum(d[0] * d[2][k][0] for d in cands) / total,
                sum(d[0] * d[2][k][1] for d in cands) / total) for k in range(6)]
        out.append((top[0], box, kps))
    # Letterbox-normalised -> frame pixels.
    h, w = frame_hw
    scale = size / max(h, w)
    left, top_ = (size - round(w * scale)) // 2, (size - round(h * scale)) // 2
    px = lambda x, y: ((x * size - left) / scale, (y * size - top_) / scale)
    return [(s, [*px(b[0], b[1]), *px(b[2], b[3])], [px(*k) for k in kps]) for s, b, kps in out]


@pytest.mark.parametrize("variant", VARIANTS)
def test_detections_agree_with_an_independent_decoding(variant, frames):
    path = _model_path(variant)
    model = bf.load(path)
    size = model.variant.input_size
    images = np.asarray(bf.letterbox(jnp.asarray(frames), size))
    got = bf.make_detector(model, max_faces=8)(frames)   # one batch: frames must not mix
    for i in range(len(frames)):
        regs, logits = _litert(path, images[i:i + 1])
        want = _reference_detections(regs[0], logits[0], model.variant, frames.shape[1:3])
        valid = np.asarray(got.valid[i])
        assert valid.sum() == len(want) >= 1, f"frame {i}"
        for k, (score, box, kps) in enumerate(want):
            assert float(got.scores[i, k]) == pytest.approx(score, abs=1e-5)
            np.testing.assert_allclose(np.asarray(got.boxes[i, k]), box, atol=0.02)
            np.testing.assert_allclose(np.asarray(got.keypoints[i, k]), kps, atol=0.02)


def test_anchor_layouts_match_the_output_grids():
    full = bf.variant_anchors(bf.VARIANTS["full_range"])
    short = bf.variant_anchors(bf.VARIANTS["short_range"])
    assert full.shape == (2304, 4) and short.shape == (896, 4)
    assert (full[:, 2:] == 1).all() and (short[:, 2:] == 1).all()   # fixed_anchor_size
    # Full range: one anchor per cell of the 48 x 48 map, row-major.
    np.testing.assert_allclose(full[49, :2], [1.5 / 48, 1.5 / 48])
    # Short range: 2 per cell of 16 x 16, then 6 per cell of 8 x 8.
    np.testing.assert_allclose(short[0, :2], short[1, :2])
    np.testing.assert_allclose(short[2, :2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(short[512:518, :2], np.tile([[0.5 / 8, 0.5 / 8]], (6, 1)))
    np.testing.assert_allclose(short[-1, :2], [7.5 / 8, 7.5 / 8])


def test_weighted_nms_averages_overlapping_boxes_by_score():
    boxes = jnp.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.0, 1.1, 1.0], [3.0, 3.0, 4.0, 4.0],
                       [0.0, 0.0, 1.0, 1.0]])
    kps = jnp.broadcast_to(boxes[:, None, :2], (4, 6, 2))
    scores = jnp.array([0.9, 0.6, 0.7, 0.95])
    kept = jnp.array([True, True, True, False])   # the last one is below the threshold
    out = bf.weighted_nms(boxes, kps, scores, kept, max_out=3)
    assert np.asarray(out.valid).tolist() == [True, True, False]
    np.testing.assert_allclose(np.asarray(out.scores), [0.9, 0.7, 0.0])
    np.testing.assert_allclose(np.asarray(out.boxes[0]), [0.06 / 1.5, 0, 1 + 0.06 / 1.5, 1],
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.boxes[1]), [3, 3, 4, 4])
    np.testing.assert_allclose(np.asarray(out.keypoints[0, 3]), [0.06 / 1.5, 0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad files.


def test_bad_model_files_name_the_file(tmp_path):
    text = tmp_path / "notes.tflite"
    text.write_text("not a model at all")
    with pytest.raises(tflite_lib.TFLiteError, match=rf"{text}: not a TensorFlow Lite model"):
        bf.load(text)
    with pytest.raises(bf.BlazeFaceError, match=r"missing.tflite: no such model file"):
        bf.load(tmp_path / "missing.tflite")
    real = _model_path("short_range").read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(real[:2000])
    with pytest.raises((tflite_lib.TFLiteError, bf.BlazeFaceError), match=str(cut)):
        bf.load(cut)
    mesh = MODELS / "face_landmark.tflite"
    if mesh.is_file():
        with pytest.raises(bf.BlazeFaceError, match=rf"{mesh}: input .* not those of a BlazeFace"):
            bf.load(mesh)


def test_tflite_graph_lists_the_operators():
    graph = tflite_lib.read(_model_path("full_range"))
    counts = graph.op_counts()
    assert counts["CONV_2D"] == 49 and counts["DEPTHWISE_CONV_2D"] == 40
    assert counts["DEQUANTIZE"] == 178 and counts["RESIZE_BILINEAR"] == 3
    consts = graph.constants()
    assert consts["conv2d/Kernel_dequantize"].dtype == np.float32
    assert consts["conv2d/Kernel_dequantize"].shape == (32, 3, 3, 3)
    np.testing.assert_array_equal(consts["conv2d/Kernel_dequantize"],
                                  consts["conv2d/Kernel"].astype(np.float32))
