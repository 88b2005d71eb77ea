"""abaw_jax.data.faces: real faces found, none invented, alignment, tracks and the crop writer."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="needs opencv-python-headless 4.x (the 'video' extra)")

from abaw_jax.data import faces as faces_lib  # noqa: E402
from abaw_jax.data import video as video_lib  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
FULL = SHARED / "models" / "mediapipe" / "face_detection_full_range.tflite"
VIDEO = SHARED / "videos" / "fer_woman2.mp4"
CKPLUS = SHARED / "ckplus48"
# scikit-image's sample photographs without people (bundled with the package, no download).
FACE_FREE = ("coffee", "chelsea", "rocket", "coins", "moon", "page", "text", "hubble_deep_field",
             "immunohistochemistry", "brick", "grass", "gravel", "retina", "clock", "cell",
             "colorwheel")


@pytest.fixture(scope="module")
def detector(optimized_xla) -> faces_lib.BlazeFaceDetector:
    """predict's default: the full-range weights shipped with the package."""
    return faces_lib.BlazeFaceDetector(batch_size=8)


@pytest.fixture(scope="module")
def woman() -> np.ndarray:
    if not VIDEO.is_file():
        pytest.skip(f"test video not found at {VIDEO}")
    return np.concatenate(list(video_lib.open_source(VIDEO).chunks(64)))


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Real faces found, none invented.


def test_every_ckplus_face_is_found(detector):
    """CK+48 crops (48 px, brows to chin) at their size in a dark 192 x 144 scene: >= 99%."""
    if not CKPLUS.is_dir():
        pytest.skip(f"CK+48 images not found at {CKPLUS}")
    files = sorted(CKPLUS.rglob("*.png"))
    assert len(files) == 594
    frames = np.zeros((len(files), 144, 192), np.uint8)
    for i, f in enumerate(files):
        frames[i, 48:96, 72:120] = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
    found = detector.detect_batch(_rgb(frames[..., None].repeat(3, -1)))
    hit = np.array([len(f.scores) > 0 for f in found])
    assert hit.mean() >= 0.99, f"{hit.mean():.4f}; missed {[files[i].name for i in np.flatnonzero(~hit)][:10]}"
    # The box is on the face: its centre within 8 px of the pasted crop's centre.
    centres = np.array([f.boxes[0, :2] + f.boxes[0, 2:] / 2 for f, h in zip(found, hit) if h])
    assert np.median(np.abs(centres - [96, 72]).max(1)) < 8


def test_face_free_photographs_give_no_detection(detector):
    data = pytest.importorskip("skimage.data", reason="needs scikit-image (the 'test' extra)")
    images = [_rgb(getattr(data, name)()) for name in FACE_FREE]
    found = detector.detect_images(images)
    invented = {n: f.scores.max() for n, f in zip(FACE_FREE, found) if len(f.scores)}
    assert not invented, f"faces above the default threshold in {invented}"
    # The same call does find the two sample photographs that show a face.
    people = detector.detect_images([_rgb(data.astronaut()), _rgb(data.camera())])
    assert all(len(f.scores) == 1 for f in people)


@pytest.fixture(scope="module")
def woman_faces(detector, woman) -> list[faces_lib.Faces]:
    """The detections of every frame of fer_woman2.mp4."""
    return detector.detect_batch(woman)


def test_fer_woman2_has_one_track_and_a_face_in_almost_every_frame(woman_faces, woman):
    found = woman_faces
    assert np.mean([len(f.scores) > 0 for f in found]) >= 0.98
    tracks = faces_lib.link_tracks(found, max_gap=15)
    assert len(tracks) == 1 and len(tracks[0].frames) >= 0.98 * len(woman)


def test_gaps_cut_from_a_real_track_are_bridged(woman_faces):
    """Detections removed from frames of fer_woman2's one track come back interpolated: the
    bridged boxes and keypoints lie within 5% of the face's side of the removed ones; a gap
    longer than the limit (0.5 s: 15 frames at 29.97 fps) stays empty; the table says which
    frames were bridged."""
    from abaw_jax.predict import table as table_lib
    assert all(len(f.scores) == 1 for f in woman_faces)   # one face, found in every frame
    bridged = [range(60, 62), range(150, 154), range(250, 258), range(330, 345)]
    too_long = range(400, 416)                             # 16 frames > 15
    cut = list(woman_faces)
    for t in (t for g in (*bridged, too_long) for t in g):
        cut[t] = faces_lib.Faces.empty()
    face = faces_lib.faces_of_video(cut, (336, 596), 29.97)[0]   # predict's defaults
    gap = np.array([t for g in bridged for t in g])
    assert np.flatnonzero(face.interpolated).tolist() == gap.tolist()
    assert not face.found[list(too_long)].any()
    assert face.found.sum() == 464 - len(too_long)
    want = np.stack([woman_faces[t].boxes[0] for t in gap]).astype(np.float64)
    got = face.boxes[gap].astype(np.float64)
    side = np.sqrt(want[:, 2] * want[:, 3])
    centre_error = np.hypot(*(got[:, :2] + got[:, 2:] / 2 - want[:, :2] - want[:, 2:] / 2).T)
    assert (centre_error / side).max() < 0.05
    assert np.abs(np.sqrt(got[:, 2] * got[:, 3]) / side - 1).max() < 0.05
    want_kp = np.stack([woman_faces[t].keypoints[0] for t in gap])
    assert (np.linalg.norm(face.keypoints[gap] - want_kp, axis=-1).mean(-1) / side).max() < 0.05
    # Where the head moves (frames 151-154) the interpolation beats holding the last box.
    moving = np.isin(gap, list(bridged[1]))
    held = woman_faces[149].boxes[0].astype(np.float64)
    held_error = np.hypot(*(held[:2] + held[2:] / 2 - want[:, :2] - want[:, 2:] / 2).T)
    assert held_error[moving].max() > 3 * centre_error[moving].max()
    table = table_lib.build_table(464, 29.97, face, {})
    assert np.flatnonzero(table["face_interpolated"]).tolist() == gap.tolist()
    assert (table["face_score"][gap] == 0).all() and (table["face_found"][gap] == 1).all()
    assert np.isfinite(table["x"][gap]).all() and np.isnan(table["x"][list(too_long)]).all()


# ---------------------------------------------------------------------------------------------
# Alignment.


def test_similarity_fit_matches_opencv():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, (4, 2))
    angle, scale, shift = 0.4, 0.7, np.array([12.0, -30.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift + rng.normal(0, 0.5, (4, 2))
    ours = faces_lib.similarity(src, dst)
    # OpenCV's fit of the same 4-parameter model, least squares on all points (no RANSAC).
    theirs, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    exact, _ = cv2.estimateAffinePartial2D(src, src @ rot.T + shift, method=cv2.LMEDS)
    np.testing.assert_allclose(faces_lib.similarity(src, src @ rot.T + shift), exact, atol=1e-5)
    np.testing.assert_allclose(ours[:, :2], rot, atol=0.02)
    assert np.abs(theirs - ours).max() < 2.0


def test_aligned_crop_puts_the_face_on_the_template(detector, woman):
    """Detecting again inside the aligned crops finds the keypoints where the template is."""
    rows = np.arange(0, len(woman), 60)
    found = detector.detect_batch(woman[rows])
    kps = np.stack([f.keypoints[0] for f in found])
    crops = faces_lib.align_crops(woman[rows], faces_lib.align_transforms(kps))
    assert crops.shape == (len(rows), 112, 112, 3)
    # BlazeFace wants context around a face: the crop, upscaled 2x, in a black 384 px frame.
    canvas = np.zeros((len(rows), 384, 384, 3), np.uint8)
    canvas[:, 80:304, 80:304] = np.stack([cv2.resize(c, (224, 224)) for c in crops])
    again = detector.detect_batch(canvas)
    want = faces_lib.template()
    for f in again:
        assert len(f.scores) == 1
        got = (f.keypoints[0, :4] - 80) / 2
        assert np.abs(got - want).max() < 4.0, got - want


def test_crop_boxes_follow_the_transform():
    kp = np.zeros((1, 6, 2), np.float32)
    # The template itself scaled 2x and shifted: no roll, crop side 224 px.
    kp[0, :4] = faces_lib.template() * 2 + [50, 20]
    face = faces_lib.FollowedFace(np.array([[0, 0, 1, 1]], np.float32), kp, np.array([True]),
                                  np.array([True]), np.array([0.9], np.float32))
    boxes, roll = faces_lib.crop_boxes(face)
    np.testing.assert_allclose(boxes[0], [50, 20, 224, 224], atol=1e-3)
    assert abs(roll[0]) < 1e-6
    # Rotated by 10 degrees about the crop centre (clockwise on screen, y down).
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    centre = np.array([162.0, 132.0])
    kp[0, :4] = (kp[0, :4] - centre) @ np.array([[c, s], [-s, c]]) + centre
    boxes, roll = faces_lib.crop_boxes(face)
    np.testing.assert_allclose(boxes[0], [50, 20, 224, 224], atol=1e-3)
    assert roll[0] == pytest.approx(10.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Tracks.


def _faces(*boxes) -> faces_lib.Faces:
    """Faces with box keypoints on a fixed layout inside each box."""
    b = np.array(boxes, np.float32).reshape(-1, 4)
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.5, 0.75], [0.1, 0.45], [0.9, 0.45]])
    kp = b[:, None, :2] + rel[None] * b[:, None, 2:]
    return faces_lib.Faces(b, np.full(len(b), 0.9, np.float32), kp.astype(np.float32))


def test_subject_is_the_dominant_track_not_the_largest_face():
    frames = []
    for t in range(100):
        boxes = [(100 + t, 80, 60, 60)]                 # the subject: all clip long
        if 40 <= t < 55:
            boxes.append((300, 50, 120, 120))           # a larger passer-by, briefly
        frames.append(_faces(*boxes))
    tracks = faces_lib.link_tracks(frames, max_gap=5)
    assert sorted(len(t.frames) for t in tracks) == [15, 100]
    subject = faces_lib.choose(tracks, frames, "subject", (240, 480))
    assert len(subject) == 1 and len(subject[0].frames) == 100
    assert subject[0].boxes[50][2] == 60
    largest = faces_lib.choose(tracks, frames, "largest", (240, 480))[0]
    assert largest.boxes[45][2] == 120 and largest.boxes[10][2] == 60
    both = faces_lib.choose(tracks, frames, "all", (240, 480), min_frames=10)
    assert [len(t.frames) for t in both] == [100, 15]         # left to right
    assert faces_lib.track_names(2) == ["_left", "_right"]
    assert faces_lib.choose(tracks, frames, "all", (240, 480), min_frames=20)[0].frames == \
        subject[0].frames


def test_tracks_link_by_keypoints_when_the_box_changes_size():
    # The box triples in 1 frame (IoU < 0.3) but the face keypoints barely move: one track.
    a = _faces((100, 100, 40, 40))
    b = _faces((80, 80, 120, 120))
    b = b._replace(keypoints=a.keypoints + 2)
    far = _faces((400, 100, 40, 40))
    tracks = faces_lib.link_tracks([a, b, far], max_gap=5)
    assert [t.frames for t in tracks] == [[0, 1], [2]]


def test_follow_fills_short_gaps_and_flags_long_ones():
    frames = [_faces((10.0 + t, 20, 40, 40)) for t in range(30)]
    for t in (5, 6, 7, *range(15, 25)):
        frames[t] = faces_lib.Faces.empty()
    faces = faces_lib.faces_of_video(frames, (100, 200), fps=10, max_gap_s=0.5, smooth_s=0.0)
    f = faces[0]
    assert f.found.tolist() == [t not in range(15, 25) for t in range(30)]
    assert f.detected[[5, 6, 7]].tolist() == [False] * 3 and (f.score[[5, 6, 7]] == 0).all()
    np.testing.assert_allclose(f.boxes[4:9, 0], [14, 15, 16, 17, 18])
    np.testing.assert_allclose(f.keypoints[6, 0], [16 + 12, 20 + 16])
    assert f.has_keypoints


# ---------------------------------------------------------------------------------------------
# The crop writer and bad input.


def test_written_crops_are_the_crops_predict_uses(detector, woman, tmp_path):
    clip = woman[:20]
    counts = faces_lib.write_aligned(clip, tmp_path / "clip", detector=detector, quality=100)
    assert counts == {str(tmp_path / "clip"): 20}
    files = sorted((tmp_path / "clip").iterdir())
    assert [f.name for f in files] == [f"{i:05d}.jpg" for i in range(1, 21)]
    found = detector.detect_batch(clip)
    face = faces_lib.faces_of_video(found, clip.shape[1:3], 30.0)[0]
    want = faces_lib.face_crops(clip, face, np.arange(20))
    got = np.stack([cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files])
    assert np.abs(got.astype(int) - want).mean() < 1.5      # JPEG at quality 100


def test_model_defaults_to_the_shipped_weights_and_bad_choices_are_named(tmp_path, monkeypatch):
    from abaw_jax.models import blazeface
    monkeypatch.delenv(faces_lib.MODEL_ENV, raising=False)
    assert faces_lib.find_model() == blazeface.shipped_path("full_range")
    assert faces_lib.find_model("short_range") == blazeface.shipped_path("short_range")
    monkeypatch.setenv(faces_lib.MODEL_ENV, "short_range")
    assert faces_lib.find_model() == blazeface.shipped_path("short_range")
    assert faces_lib.find_model(FULL) == FULL
    with pytest.raises(blazeface.BlazeFaceError, match=rf"{tmp_path / 'gone.tflite'}: no such"):
        faces_lib.BlazeFaceDetector(tmp_path / "gone.tflite")
    with pytest.raises(ValueError, match="unknown track mode 'everyone'"):
        faces_lib.choose([], [], "everyone", (10, 10))
    with pytest.raises(ValueError, match="unknown detector 'dlib'"):
        faces_lib.make_detector("dlib")
