"""Face detection throughput: OpenCV's Haar cascade against BlazeFace in Flax, same decoded clip.

The clip is decoded once into memory; each row then detects every frame of it, after one warm-up
batch (so jit compilation is not counted), and reports frames/s and the share of frames with a
face. Rows:
  haar                    abaw_jax.data.faces.HaarDetector, predict's defaults (320 px, min 0.1)
  blazeface <model> host  BlazeFaceDetector with the shipped weights: cv2 letterbox on the host,
                          network + decoding + NMS jitted on the default device (predict's
                          default on a CPU)
  blazeface <model> dev   the same with the letterbox inside the jitted function (whole frames
                          sent to the device; predict's default on an accelerator)
  network <model>         the Flax network alone on letterboxed batches (no decoding, no NMS)
  litert network <model>  the reference: MediaPipe's .tflite file of the same network in the
                          LiteRT interpreter (XNNPACK, one thread per core), one image per call
                          (needs ai-edge-litert and the .tflite files, --face-models)
Then a second table: the share of the CK+ crops detected, per model and per scene around the
crop (black, grey, noise, the crop's border replicated or reflected).

    python scripts/benchmark.py --systems detect [--video clip.mp4] [--face-models DIR]
"""

from __future__ import annotations

import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "videos" / "fer_woman2.mp4"
DEFAULT_MODELS = ROOT.parent / "shared" / "data" / "models" / "mediapipe"
DEFAULT_CKPLUS = ROOT.parent / "shared" / "data" / "ckplus48"
# How a 48 px CK+ crop (brows to chin) is placed in a 192 x 144 scene.
CANVASES = ("black", "grey", "noise", "replicate", "reflect")


def _rate(detector, frames: np.ndarray, batch: int) -> tuple[float, float]:
    detector.detect_batch(frames[:batch])                      # compile outside the clock
    t0 = time.perf_counter()
    found = detector.detect_batch(frames)
    seconds = time.perf_counter() - t0
    return len(frames) / seconds, float(np.mean([len(f.scores) > 0 for f in found]))


def rows(video: str | None = None, models: str | None = None, batch: int = 16) -> list[dict]:
    """The detection rows (module doc); an empty list, with a message, when inputs are missing."""
    import jax
    from abaw_jax.data import faces, video as video_lib
    from abaw_jax.models import blazeface

    video = pathlib.Path(video or DEFAULT_VIDEO)
    models = pathlib.Path(models or DEFAULT_MODELS)
    if not video.is_file():
        print(f"detect rows skipped: no video at {video} (--video)")
        return []
    frames = np.concatenate(list(video_lib.open_source(video).chunks(64)))
    h, w = frames.shape[1:3]
    print(f"detect rows: {video.name}, {len(frames)} frames of {w}x{h}, decoded once; "
          f"BlazeFace batches of {batch}")
    out = []
    fps, share = _rate(faces.HaarDetector(), frames, batch)
    out.append(dict(row="haar", fps=fps, share=share))
    haar = fps
    for name in ("full_range", "short_range"):
        path = models / f"face_detection_{name}.tflite"
        for where in ("host", "device"):
            det = faces.BlazeFaceDetector(name, batch_size=batch, letterbox=where)
            fps, share = _rate(det, frames, batch)
            out.append(dict(row=f"blazeface {name} {where}", fps=fps, share=share))
        model = blazeface.load(name)
        size = model.variant.input_size
        images = jax.numpy.zeros((batch, size, size, 3))
        apply = jax.jit(model.module.apply)
        jax.block_until_ready(apply(model.variables, images))
        t0 = time.perf_counter()
        n = 0
        while n < len(frames):
            jax.block_until_ready(apply(model.variables, images))
            n += batch
        out.append(dict(row=f"network {name}", fps=n / (time.perf_counter() - t0), share=None))
        if not path.is_file():
            print(f"  no {path}: the LiteRT row of {name} skipped (--face-models)")
            continue
        litert = _litert_rate(path, size, len(frames))
        if litert is not None:
            out.append(dict(row=f"litert network {name}", fps=litert, share=None))
    for r in out:
        r["vs_haar"] = r["fps"] / haar
    return out


def _litert_rate(path: pathlib.Path, size: int, count: int) -> float | None:
    """Frames/s of the reference runtime (LiteRT with XNNPACK, one thread per core) on the same
    network, one image per call as MediaPipe runs it; None without ``ai-edge-litert``."""
    import os
    try:
        from ai_edge_litert import interpreter as litert
    except ImportError:
        print("  litert rows skipped: ai-edge-litert is not installed (the 'test' extra)")
        return None
    interp = litert.Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    image = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    interp.set_tensor(index, image)
    interp.invoke()                                            # warm-up outside the clock
    t0 = time.perf_counter()
    for _ in range(count):
        interp.set_tensor(index, image)
        interp.invoke()
    return count / (time.perf_counter() - t0)


def canvas_scene(face: np.ndarray, canvas: str, rng: np.random.Generator) -> np.ndarray:
    """A 144 x 192 grey scene with the 48 x 48 `face` at its centre, the rest of it `canvas`:
    black (0), grey (128), uniform noise, or the crop's border replicated or reflected."""
    import cv2
    if canvas in ("replicate", "reflect"):
        mode = cv2.BORDER_REPLICATE if canvas == "replicate" else cv2.BORDER_REFLECT_101
        return cv2.copyMakeBorder(face, 48, 48, 72, 72, mode)
    scene = (rng.integers(0, 256, (144, 192)) if canvas == "noise"
             else np.full((144, 192), {"black": 0, "grey": 128}[canvas])).astype(np.uint8)
    scene[48:96, 72:120] = face
    return scene


def ckplus_rows(ckplus: str | None = None) -> list[dict]:
    """Share of the CK+ faces detected per canvas (:func:`canvas_scene`) and shipped model."""
    import cv2
    from abaw_jax.data import faces
    ckplus = pathlib.Path(ckplus or DEFAULT_CKPLUS)
    files = sorted(ckplus.rglob("*.png"))
    if not files:
        print(f"CK+ rows skipped: no images under {ckplus}")
        return []
    crops = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    out = []
    for name in ("full_range", "short_range"):
        det = faces.BlazeFaceDetector(name, batch_size=8)
        for canvas in CANVASES:
            rng = np.random.default_rng(0)
            scenes = np.stack([canvas_scene(c, canvas, rng) for c in crops])
            found = det.detect_batch(np.repeat(scenes[..., None], 3, -1))
            out.append(dict(model=name, canvas=canvas, n=len(files),
                            share=float(np.mean([len(f.scores) > 0 for f in found]))))
    return out


def print_ckplus(found: list[dict]) -> None:
    if not found:
        return
    print(f"CK+ faces detected ({found[0]['n']} crops of 48 px in a 192 x 144 scene)")
    print(f"{'model':<14}" + "".join(f"{c:>11}" for c in CANVASES))
    for name in dict.fromkeys(r["model"] for r in found):
        shares = {r["canvas"]: r["share"] for r in found if r["model"] == name}
        print(f"{name:<14}" + "".join(f"{100 * shares[c]:>10.1f}%" for c in CANVASES))
    print(flush=True)


def print_rows(found: list[dict]) -> None:
    """A small table: frames/s, the ratio to Haar and the share of frames with a face."""
    if not found:
        return
    print(f"{'detector':<28}{'frames/s':>10}{'x haar':>9}{'with face':>11}")
    for r in found:
        share = f"{100 * r['share']:.1f}%" if r["share"] is not None else "-"
        print(f"{r['row']:<28}{r['fps']:>10.1f}{r['vs_haar']:>9.1f}{share:>11}")
    print(flush=True)
