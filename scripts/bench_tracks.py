"""Track gap bridging: the share of frames with the subject's face before and after bridging.

For each clip and detector, the detections are linked into tracks and the subject is chosen as
`predict` does (`faces.faces_of_video`'s defaults); the subject's track is then followed twice,
with gaps of up to 0.5 s bridged (predict's default) and with none bridged (`--max-gap 0`).
A frame counts as "with the subject" when the followed box's centre lies within half a face
side of the subject's (the true box on the synthetic clip; any followed box on fer_woman2,
which shows one face). "on subject" is the ceiling: the share of frames where some detection
is on the subject.

Clips:
  fer_woman2   ../shared/data/videos/fer_woman2.mp4 (464 frames, one face)
  crowd        a synthetic 640 x 360 clip, 240 frames at 30 fps (:func:`crowd_clip`): six CK+
               faces on a textured background; the subject crosses the scene from left to right
               while five others cross it in other directions, two of them in front of the
               subject (occlusion), and the subject's face is motion-blurred in bursts of
               4 frames (a quick head movement)

    python scripts/bench_tracks.py [--detectors full_range,short_range,haar]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "videos" / "fer_woman2.mp4"
DEFAULT_CKPLUS = ROOT.parent / "shared" / "data" / "ckplus48"
FPS = 30.0


def _head(face: np.ndarray, side: int) -> np.ndarray:
    """A CK+ crop scaled to `side` px inside a dark oval (hair and head outline), RGB uint8."""
    import cv2
    big = int(side * 1.5)
    head = np.zeros((big, big), np.uint8)
    cv2.ellipse(head, (big // 2, big // 2), (int(side * 0.68), int(side * 0.74)), 0, 0, 360, 35, -1)
    off = (big - side) // 2
    head[off:off + side, off:off + side] = cv2.resize(face, (side, side),
                                                      interpolation=cv2.INTER_CUBIC)
    return np.repeat(head[..., None], 3, -1)


def crowd_clip(ckplus: pathlib.Path, n: int = 240, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames uint8 [n, 360, 640, 3], the subject's face box [n, 4] (x, y, w, h), visible [n]).

    Six different CK+ subjects. The subject (110 px) walks from x = 20 to x = 510 over the
    whole clip; the five others (64 to 80 px) cross in other directions, at other speeds and
    times, drawn after the subject: one passes fast in front of it (frames 60 to 100), one
    crosses its path from top to bottom (frames 120 to 200). Every 40 frames the subject's region is
    blurred horizontally (a 31-px box kernel) for 4 frames.
    """
    import cv2
    rng = np.random.default_rng(seed)
    by_subject: dict[str, pathlib.Path] = {}
    for f in sorted(ckplus.rglob("*.png")):
        by_subject.setdefault(f.name.split("_")[0], f)
    picks = [by_subject[s] for s in sorted(by_subject)[:: max(1, len(by_subject) // 6)][:6]]
    faces = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in picks]
    noise = rng.normal(0, 1, (360 // 8, 640 // 8)).astype(np.float32)
    background = cv2.resize(noise, (640, 360), interpolation=cv2.INTER_CUBIC)
    background = np.clip(125 + 30 * background, 0, 255).astype(np.uint8)
    background = np.repeat(background[..., None], 3, -1)
    # (face, side, start xy, end xy, first frame, last frame) per person; the subject first.
    people = [(0, 110, (20, 120), (510, 105), 0, n - 1),
              (1, 70, (620, 10), (-80, 20), 0, n - 1),         # right to left, above
              (2, 80, (620, 125), (-100, 135), 60, 100),       # fast, in front of the subject
              (3, 64, (300, -90), (290, 380), 120, 200),       # top to bottom, in front
              (4, 76, (-90, 250), (640, 262), 0, n - 1),       # left to right, below
              (5, 68, (640, 275), (90, 265), 100, n - 1)]      # right to left, below
    heads = [_head(faces[i], side) for i, side, *_ in people]
    frames = np.empty((n, 360, 640, 3), np.uint8)
    truth = np.zeros((n, 4), np.float32)
    visible = np.zeros(n, bool)
    for t in range(n):
        img = background.copy()
        for k, (head, (_, side, p0, p1, t0, t1)) in enumerate(zip(heads, people)):
            if not t0 <= t <= t1:
                continue
            a = (t - t0) / (t1 - t0)
            big = head.shape[0]
            x = int(round(p0[0] + a * (p1[0] - p0[0]))) - (big - side) // 2
            y = int(round(p0[1] + a * (p1[1] - p0[1]) + (6 * np.sin(t / 7) if k == 0 else 0)))
            y -= (big - side) // 2
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + big, 640), min(y + big, 360)
            if x1 <= x0 or y1 <= y0:
                continue
            patch = head[y0 - y:y1 - y, x0 - x:x1 - x]
            mask = patch[..., :1] > 0
            img[y0:y1, x0:x1] = np.where(mask, patch, img[y0:y1, x0:x1])
            if k == 0:
                off = (big - side) // 2
                truth[t] = (x + off, y + off, side, side)
                visible[t] = True
                if t % 40 in (20, 21, 22, 23):
                    region = img[y0:y1, x0:x1]
                    img[y0:y1, x0:x1] = np.where(mask, cv2.blur(region, (31, 1)), region)
        frames[t] = img
    return frames, truth, visible


def subject_shares(faces_per_frame, frame_hw, fps: float, truth: np.ndarray | None = None
                   ) -> dict[str, float]:
    """Shares of frames: "on_subject" with a detection on the subject (the ceiling; any
    detection without `truth`), "before" / "after" with the followed subject without / with
    bridging; "bridged": frames bridged."""
    from abaw_jax.data import faces as faces_lib
    max_gap = int(round(0.5 * fps))
    tracks = faces_lib.link_tracks(faces_per_frame, max_gap=max_gap)
    chosen = faces_lib.choose(tracks, faces_per_frame, "subject", frame_hw)
    track = chosen[0] if chosen else None
    n = len(faces_per_frame)

    def on_subject(boxes: np.ndarray, t: int) -> bool:
        if truth is None:
            return len(boxes) > 0
        centre = boxes[:, :2] + boxes[:, 2:] / 2
        want = truth[t, :2] + truth[t, 2:] / 2
        return bool(len(boxes)) and bool((np.hypot(*(centre - want).T) < 0.5 * truth[t, 2]).any())

    out = {"on_subject": float(np.mean([on_subject(f.boxes, t)
                                        for t, f in enumerate(faces_per_frame)]))}
    for name, gap in (("before", 0), ("after", max_gap)):
        face = faces_lib.follow(track, n, max_gap=gap, smooth=0.07 * fps)
        out[name] = float(np.mean([face.found[t] and on_subject(face.boxes[t:t + 1], t)
                                   for t in range(n)]))
        out["bridged"] = int(face.interpolated.sum())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/bench_tracks.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", default=str(DEFAULT_VIDEO))
    parser.add_argument("--ckplus", default=str(DEFAULT_CKPLUS))
    parser.add_argument("--detectors", default="full_range,short_range,haar")
    parser.add_argument("--save-crowd", help="also write the synthetic clip as an mp4 here")
    args = parser.parse_args(argv)
    from abaw_jax.data import faces as faces_lib
    from abaw_jax.data import video as video_lib

    clips = {}
    if pathlib.Path(args.video).is_file():
        frames = np.concatenate(list(video_lib.open_source(args.video).chunks(64)))
        clips["fer_woman2"] = (frames, None, video_lib.open_source(args.video).info.fps)
    if pathlib.Path(args.ckplus).is_dir():
        frames, truth, visible = crowd_clip(pathlib.Path(args.ckplus))
        clips["crowd"] = (frames, truth, FPS)
        print(f"crowd clip: {len(frames)} frames, subject visible in {visible.mean():.1%}")
        if args.save_crowd:
            import cv2
            w = cv2.VideoWriter(args.save_crowd, cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 360))
            for f in frames:
                w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            w.release()
    print(f"{'clip':<12}{'detector':<13}{'on subject':>12}{'no bridging':>13}{'bridged':>10}"
          f"{'frames bridged':>16}")
    for name in args.detectors.split(","):
        det = (faces_lib.HaarDetector() if name == "haar"
               else faces_lib.BlazeFaceDetector(name, batch_size=16))
        for clip, (frames, truth, fps) in clips.items():
            r = subject_shares(det.detect_batch(frames), frames.shape[1:3], fps, truth)
            print(f"{clip:<12}{name:<13}{r['on_subject']:>12.1%}{r['before']:>13.1%}"
                  f"{r['after']:>10.1%}{r['bridged']:>16}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
