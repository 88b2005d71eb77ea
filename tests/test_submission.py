"""Submission files: the official format, forms seen in the wild, completeness checks."""

import numpy as np
import pytest

from abaw_jax import submission


def test_round_trip_every_task(tmp_path):
    rng = np.random.default_rng(0)
    outs = {"VA": [rng.uniform(-1.5, 1.5, (5, 2)), rng.uniform(-1, 1, (3, 2))],
            "EXPR": [rng.normal(size=(5, 8)), rng.normal(size=(3, 8))],
            "AU": [rng.normal(size=(5, 12)), rng.normal(size=(3, 12))]}
    names = ["1-30-1280x720", "video45_1_left"]
    for task, outputs in outs.items():
        path = submission.write_submission(tmp_path / f"{task}.txt", task, names, outputs)
        lines = path.read_text().splitlines()
        assert lines[1].startswith("1-30-1280x720/00001.jpg,")
        assert lines[-1].startswith("video45_1_left/00003.jpg,")
        assert len(lines) == 1 + 5 + 3
        submission.check_submission(path, task, {"1-30-1280x720": 5, "video45_1_left": 3})
        got = submission.read_submission(path, task)
        for name, out in zip(names, outputs):
            expected = submission.decisions(task, out)
            values = np.stack([got[name][t + 1] for t in range(len(out))])
            if task == "VA":
                np.testing.assert_allclose(values, expected, atol=1e-6)
            else:
                np.testing.assert_array_equal(values.reshape(expected.shape), expected)
    # The AU decision is sigmoid(logit) >= 0.5, computed independently here.
    logits = outs["AU"][0]
    np.testing.assert_array_equal(submission.decisions("AU", logits),
                                  (1 / (1 + np.exp(-logits)) >= 0.5).astype(int))


def test_reads_quoted_header_and_missing_frames(tmp_path):
    p = tmp_path / "expr.txt"
    p.write_text('image_location,"Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"\n'
                 "10-60-1280x720/00001.jpg,4\n10-60-1280x720/00003.jpg,0\n")
    got = submission.read_submission(p, "EXPR")
    assert sorted(got["10-60-1280x720"]) == [1, 3]
    with pytest.raises(submission.SubmissionError, match=r"1 of 3 frames missing, e.g. \[2\]"):
        submission.check_submission(p, "EXPR", {"10-60-1280x720": 3})
    with pytest.raises(submission.SubmissionError, match="video 103 missing"):
        submission.check_submission(p, "EXPR", {"10-60-1280x720": 3, "103": 2})


@pytest.mark.parametrize("body,msg", [
    ("image_location,valence\n", "header"),
    ("image_location,valence,arousal\nv/00001.jpg,0.1\n", ":2: expected 3 fields"),
    ("image_location,valence,arousal\nv/00001.jpg,0.1,x\n", ":2: non-numeric"),
    ("image_location,valence,arousal\nv/00001.jpg,0.1,1.5\n", r":2: valence/arousal outside"),
    ("image_location,valence,arousal\nv/frame1.png,0.1,0.1\n", ":2: image_location"),
    ("image_location,valence,arousal\nv/00001.jpg,0.1,0.1\nv/00001.jpg,0,0\n", ":3: frame .* twice"),
])
def test_malformed(tmp_path, body, msg):
    p = tmp_path / "va.txt"
    p.write_text(body)
    with pytest.raises(submission.SubmissionError, match=msg):
        submission.read_submission(p, "VA")
