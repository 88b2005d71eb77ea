"""Face detection throughput: OpenCV's Haar cascade against BlazeFace in Flax, same decoded clip.

The clip is decoded once into memory; each row then detects every frame of it, after one warm-up
batch (so jit compilation is not counted), and reports frames/s and the share of frames with a
face. Rows:
  haar                    abaw_jax.data.faces.HaarDetector, predict's defaults (320 px, min 0.1)
  blazeface <model> host  BlazeFaceDetector: cv2 letterbox on the host, network + decoding + NMS
                          jitted on the default device (predict's default on a CPU)
  blazeface <model> dev   the same with the letterbox inside the jitted function (whole frames
                          sent to the device; predict's default on an accelerator)
  network <model>         the Flax network alone on letterboxed batches (no decoding, no NMS)
  litert network <model>  the reference: the same .tflite network in the LiteRT interpreter
                          (XNNPACK, one thread per core), one image per call (needs ai-edge-litert)

    python scripts/benchmark.py --systems detect [--video clip.mp4] [--face-models DIR]
"""

from __future__ import annotations

import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "videos" / "fer_woman2.mp4"
DEFAULT_MODELS = ROOT.parent / "shared" / "data" / "models" / "mediapipe"


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
        if not path.is_file():
            print(f"  no {path}: its rows skipped")
            continue
        for where in ("host", "device"):
            det = faces.BlazeFaceDetector(path, batch_size=batch, letterbox=where)
            fps, share = _rate(det, frames, batch)
            out.append(dict(row=f"blazeface {name} {where}", fps=fps, share=share))
        model = blazeface.load(path)
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


def print_rows(found: list[dict]) -> None:
    """A small table: frames/s, the ratio to Haar and the share of frames with a face."""
    if not found:
        return
    print(f"{'detector':<28}{'frames/s':>10}{'x haar':>9}{'with face':>11}")
    for r in found:
        share = f"{100 * r['share']:.1f}%" if r["share"] is not None else "-"
        print(f"{r['row']:<28}{r['fps']:>10.1f}{r['vs_haar']:>9.1f}{share:>11}")
    print(flush=True)
