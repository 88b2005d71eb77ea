"""grain pipelines of fixed-length windows over videos, and the reverse: windows back to videos.

An example is one window of `L = seq_len` consecutive frames of one video (dicts of numpy
arrays; batches add a leading axis)::

    "features"    float32 [L, D]   ("features/<name>" per set of a FeatureSets)
    "labels"      as the videos' labels, [L] or [L, C]; 0 on padding
    "valid"       bool, as labels; False on padding
    "present"     bool [L]  frame has a face image in the videos and in every feature store
    "frame_mask"  bool [L]  real frame (False on padding past the end of the video)
    "video"       int32 []  index into the list of videos
    "start"       int32 []  first frame of the window

Features of frames that are not present, or are padding, are zeros.

Window placement: starts 0, stride, 2 * stride, ... while the window fits, then one window
right-aligned to the end of the video if frames are left over, so every frame is in a window and
no window is padded unless the whole video is shorter than `seq_len` (one window at 0).

Overlapping windows are averaged in probability space (EXPR softmax, AU sigmoid, VA as is) and
returned in raw-output form (log-probabilities, logits): the same rule as an ensemble of runs
(`abaw_jax.ensemble`). Probabilities are on one scale whatever a window's or a model's logit
temperature, so one overconfident window cannot outvote the others, and an average of
probabilities is itself a probability; decisions (argmax, sigmoid >= .5) of a frame seen by one
window are unchanged.

Training reads in grain threads from memory-mapped shards: each batch is one numpy array per key,
filled window by window with contiguous slices (and converted to float32 on the way).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from abaw_jax.data.features import FeatureSets, FeatureStore, StoreError


def window_starts(num_frames: int, seq_len: int, stride: int,
                  truncate_last: bool = False) -> np.ndarray:
    """First frames of the windows over one video of `num_frames` frames (see module doc).

    `truncate_last`: the last window starts at the next multiple of `stride` and is padded past
    the video's end (system B's test-time windows) instead of being right-aligned."""
    if num_frames <= seq_len:
        return np.zeros(1, np.int64)
    if truncate_last:
        return np.arange(0, num_frames, stride, dtype=np.int64)[
            :max(1, -(-(num_frames - seq_len) // stride) + 1)]
    starts = np.arange(0, num_frames - seq_len + 1, stride, dtype=np.int64)
    if starts[-1] + seq_len < num_frames:
        starts = np.append(starts, num_frames - seq_len)
    return starts


def causal_windows(num_frames: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, read) per frame t of one video: the window of `seq_len` frames that ends at t and
    t's position in it. The first `seq_len - 1` frames read the window starting at 0, whose
    frames after t the caller hides (no future frame is seen)."""
    frame = np.arange(num_frames, dtype=np.int64)
    start = np.maximum(frame - seq_len + 1, 0)
    return start, frame - start


def _check_window_args(seq_len: int, stride: int | None) -> int:
    if not isinstance(seq_len, (int, np.integer)) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    stride = seq_len if stride is None else stride
    if not isinstance(stride, (int, np.integer)) or not 0 < stride <= seq_len:
        # A stride past seq_len would leave frames between windows uncovered.
        raise ValueError(f"stride must be an int in [1, seq_len={seq_len}], got {stride!r}")
    return int(stride)


def _windows(lengths: Sequence[int], seq_len: int, stride: int,
             truncate_last: bool = False) -> np.ndarray:
    """[N, 2] int64 (video, start) for every window of every video, in video order."""
    parts = [
        np.stack([np.full(len(s), v, np.int64), s], axis=1)
        for v, s in ((v, window_starts(int(t), seq_len, stride, truncate_last))
                     for v, t in enumerate(lengths))
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


def num_windows(lengths: Sequence[int], seq_len: int, stride: int) -> int:
    """How many windows of `seq_len` frames at `stride` cover videos of `lengths` frames."""
    return sum(len(window_starts(n, seq_len, stride)) for n in lengths)


def eval_windows(videos: Sequence[Any], *, seq_len: int, stride: int | None = None) -> np.ndarray:
    """[N, 2] int64 (video index, start) covering every frame of every video, in order."""
    stride = _check_window_args(seq_len, stride)
    return _windows([v.num_frames for v in videos], seq_len, stride)


def _process(
    process_index: int | None, process_count: int | None, batch_size: int
) -> tuple[int, int]:
    """This process's index and the process count (jax's by default), checked."""
    if process_index is None or process_count is None:
        import jax  # Imported here: the pipeline itself never needs a device.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} outside [0, process_count={process_count})"
        )
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} must be a positive multiple of process_count {process_count}"
        )
    return process_index, process_count


class _Lease:
    """Lends pooled memory to one array: numpy views of it keep the lease alive via `.base`."""

    __slots__ = ("memory", "__array_interface__", "__weakref__")

    def __init__(self, memory: np.ndarray, shape: tuple[int, ...]):
        self.memory = memory
        self.__array_interface__ = {
            "shape": shape, "typestr": memory.dtype.str, "data": (memory.ctypes.data, False),
            "version": 3,
        }


class _ArrayPool:
    """Arrays whose memory is reused once nothing refers to them (nor to any view of them).

    A fresh batch-sized array costs a page fault per page, the kernel zeroing each one: about
    as long as filling the array. Recycling the memory of batches the consumer has dropped
    removes that cost. Lock-free: list append and pop are atomic.
    """

    def __init__(self):
        self._free: dict[tuple[int, str], list[np.ndarray]] = {}

    def empty(self, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """An uninitialised array of `shape`, on recycled memory when some is free."""
        size = math.prod(shape)
        free = self._free.setdefault((size, np.dtype(dtype).str), [])
        try:
            memory = free.pop()
        except IndexError:
            memory = np.empty(size, dtype)
        lease = _Lease(memory, shape)
        weakref.finalize(lease, free.append, memory).atexit = False
        return np.asarray(lease)


class WindowReader:
    """Everything needed to cut windows out of a list of videos and a feature store.

    Labels, masks and presence of all videos are concatenated once into flat per-frame arrays,
    so a batch of windows is a few vectorised gathers; features stay memory-mapped.
    """

    def __init__(self, videos: Sequence[Any], features: FeatureStore | FeatureSets, seq_len: int,
                 length_tolerance: int = 0):
        if isinstance(features, FeatureSets):
            sources = [(f"features/{name}", s) for name, s in features.stores.items()]
            for v in videos:
                features.num_frames(v.name)  # names the set lacking the video, or the mismatch
        elif isinstance(features, FeatureStore):
            sources = [("features", features)]
        else:
            raise TypeError(f"features must be a FeatureStore or FeatureSets, got {type(features)}")
        if not videos:
            raise ValueError("no videos")
        self.seq_len = seq_len
        self.lengths = np.array([v.num_frames for v in videos], np.int64)
        self.base = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

        first = videos[0]
        label_dtype, label_tail = np.asarray(first.labels).dtype, np.asarray(first.labels).shape[1:]
        # Per source: key, dim, a memory-mapped view per video, and per video the number of
        # frames that have stored rows.
        self.sources = [
            (key, store.dim, [], np.zeros(len(videos), np.int64)) for key, store in sources
        ]
        labels, valid, present = [], [], []
        for i, v in enumerate(videos):
            t = int(v.num_frames)
            lab, val, pre = np.asarray(v.labels), np.asarray(v.valid), np.asarray(v.present, bool)
            if t <= 0:
                raise ValueError(f"video {v.name!r}: num_frames must be > 0, got {t}")
            if lab.shape[:1] != (t,) or val.shape != lab.shape or pre.shape != (t,):
                raise ValueError(
                    f"video {v.name!r}: labels {lab.shape}, valid {val.shape}, present {pre.shape} "
                    f"do not match num_frames {t}"
                )
            if lab.dtype != label_dtype or lab.shape[1:] != label_tail:
                raise ValueError(
                    f"video {v.name!r}: labels {lab.dtype}{list(lab.shape[1:])} differ from "
                    f"video {first.name!r}: {label_dtype}{list(label_tail)} (mixed tasks?)"
                )
            for (_, store), (_, _, views, usable) in zip(sources, self.sources):
                if v.name not in store:
                    raise StoreError(f"{store.path}: video {v.name!r} is not in the feature store")
                stored = store.num_frames(v.name)
                if abs(stored - t) > length_tolerance:
                    raise StoreError(
                        f"{store.path}: video {v.name!r} has {stored} frames in the store but "
                        f"{t} in the annotations (length_tolerance={length_tolerance})"
                    )
                n = usable[i] = min(stored, t)
                views.append(store.read(v.name))
                stored_present = np.zeros(t, bool)
                stored_present[:n] = store.present(v.name)[:n]
                pre = pre & stored_present
            labels.append(lab)
            valid.append(val.astype(bool))
            present.append(pre)
        self.labels = np.concatenate(labels)
        self.valid = np.concatenate(valid)
        self.present = np.concatenate(present)
        self._arange = np.arange(seq_len, dtype=np.int64)
        self._pool = _ArrayPool()

    def any_valid(self, windows: np.ndarray) -> np.ndarray:
        """Bool [N]: the window holds at least one valid label."""
        per_frame = self.valid.reshape(len(self.valid), -1).any(axis=1)
        cumulative = np.concatenate([[0], np.cumsum(per_frame)])
        video, start = windows[:, 0], windows[:, 1]
        stop = np.minimum(start + self.seq_len, self.lengths[video])
        return cumulative[self.base[video] + stop] > cumulative[self.base[video] + start]

    def load(self, windows: np.ndarray, rows: int | None = None,
             read_features: bool = True) -> dict[str, np.ndarray]:
        """Batch of `windows` [n, 2]; with `rows`, padded to that many rows plus "batch_mask".

        `read_features` False leaves the feature keys out (a device bank holds the features).
        """
        n = len(windows)
        size = n if rows is None else rows
        video = np.zeros(size, np.int32)
        start = np.zeros(size, np.int32)
        video[:n] = windows[:, 0]
        start[:n] = windows[:, 1]
        real = np.arange(size) < n

        length = self.lengths[video]
        frames = start[:, None] + self._arange
        frame_mask = (frames < length[:, None]) & real[:, None]
        flat = self.base[video][:, None] + np.minimum(frames, length[:, None] - 1)
        labels = self.labels[flat]
        valid = self.valid[flat]
        labels[~frame_mask] = 0
        valid[~frame_mask] = False
        present = self.present[flat] & frame_mask
        batch = {
            "labels": labels,
            "valid": valid,
            "present": present,
            "frame_mask": frame_mask,
            "video": video,
            "start": start,
        }
        absent = ~present
        video_l, start_l = video[:n].tolist(), start[:n].tolist()
        for key, dim, views, usable in self.sources if read_features else ():
            out = self._pool.empty((size, self.seq_len, dim))
            stops = np.clip(usable[video[:n]] - start[:n], 0, self.seq_len).tolist()
            for i, (v, s, r) in enumerate(zip(video_l, start_l, stops)):
                if r:
                    out[i, :r] = views[v][s : s + r]
            # Everything not copied above (padding, frames past the stored rows) is not present.
            out[absent] = 0.0
            batch[key] = out
        if rows is not None:
            batch["batch_mask"] = real
        return batch


class _LoadGlobalBatch:
    """Maps a global batch of window indices to this process's rows, loaded."""

    def __init__(self, reader: WindowReader, windows: np.ndarray, lo: int, hi: int,
                 read_features: bool = True):
        self.reader, self.windows, self.lo, self.hi = reader, windows, lo, hi
        self.read_features = read_features

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return self.reader.load(self.windows[indices[self.lo : self.hi]],
                                read_features=self.read_features)


def _stack_indices(indices: Sequence[int]) -> np.ndarray:
    return np.asarray(indices, np.int64)


def train_dataset(
    videos: Sequence[Any],
    features: FeatureStore | FeatureSets,
    *,
    seq_len: int,
    stride: int | None = None,
    batch_size: int,
    seed: int,
    num_threads: int = 4,
    prefetch: int | None = None,
    skip_unlabelled: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    length_tolerance: int = 0,
    read_features: bool = True,
) -> grain.DatasetIterator:
    """Endless shuffled batches of training windows; a grain iterator with get_state/set_state.

    The shuffle, repeat and batching act on window indices with the global `batch_size`; each
    process then keeps its rows [p * b, (p + 1) * b) (b = batch_size // process_count) and loads
    only those, so any number of processes together see what one process sees. Every epoch is a
    new permutation, determined by `seed`.

    Args:
      videos: objects with name, num_frames, labels, valid, present (affwild2.Video).
      features: the store(s) holding every video.
      stride: window step (default seq_len); the last window of a video is right-aligned.
      num_threads: grain threads loading batches; `prefetch` batches are kept ready
        (default 2 * num_threads; each costs batch_size / process_count * seq_len * D * 4 bytes).
      skip_unlabelled: leave out windows without any valid label.
      length_tolerance: accept stores whose frame count differs from the video's by up to this
        much; frames missing from the store are not present.
      read_features: False delivers every key but the features (for `device_bank`, which
        gathers them on the devices); the windows and their order do not change.
    """
    stride = _check_window_args(seq_len, stride)
    process_index, process_count = _process(process_index, process_count, batch_size)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    reader = WindowReader(videos, features, seq_len, length_tolerance)
    windows = _windows(reader.lengths, seq_len, stride)
    if skip_unlabelled:
        windows = windows[reader.any_valid(windows)]
        if not len(windows):
            raise ValueError("no training window has a valid label")
    local = batch_size // process_count
    ds = (
        grain.MapDataset.range(len(windows))
        .shuffle(seed=seed)
        .repeat()
        .batch(batch_size, drop_remainder=True, batch_fn=_stack_indices)
        .map(_LoadGlobalBatch(reader, windows, process_index * local, (process_index + 1) * local,
                              read_features))
    )
    prefetch = 2 * num_threads if prefetch is None else prefetch
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(options))


class _LoadEvalBatch:
    """Maps a global batch number to this process's rows of it, padded."""

    def __init__(self, reader: WindowReader, windows: np.ndarray, batch_size: int,
                 lo: int, hi: int):
        self.reader, self.windows, self.batch_size = reader, windows, batch_size
        self.lo, self.hi = lo, hi

    def __call__(self, g: int) -> dict[str, np.ndarray]:
        first = g * self.batch_size
        rows = self.windows[first + self.lo : first + self.hi]
        return self.reader.load(rows, rows=self.hi - self.lo)


def eval_batches(
    videos: Sequence[Any],
    features: FeatureStore | FeatureSets,
    *,
    seq_len: int,
    stride: int | None = None,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    num_threads: int = 2,
    prefetch: int | None = None,
    length_tolerance: int = 0,
    truncate_last: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `eval_windows` in order, each padded to batch_size // process_count rows
    (`truncate_last`: see `window_starts`).

    Global batch g holds windows [g * batch_size, (g + 1) * batch_size); process p gets its rows
    [p * b, (p + 1) * b), so every process yields the same number of batches. "batch_mask" bool
    [b] is False on padding rows (whose frame_mask is all False).
    """
    stride = _check_window_args(seq_len, stride)
    process_index, process_count = _process(process_index, process_count, batch_size)
    if not videos:
        return iter(())
    reader = WindowReader(videos, features, seq_len, length_tolerance)
    windows = _windows(reader.lengths, seq_len, stride, truncate_last)
    local = batch_size // process_count
    num_batches = math.ceil(len(windows) / batch_size)
    lo, hi = process_index * local, (process_index + 1) * local
    load = _LoadEvalBatch(reader, windows, batch_size, lo, hi)
    ds = grain.MapDataset.range(num_batches).map(load)
    prefetch = 2 * num_threads if prefetch is None else prefetch
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(options))


def to_probabilities(task: str, outputs: np.ndarray) -> np.ndarray:
    """Raw outputs -> the space in which outputs are averaged (per task's columns for "MTL")."""
    x = np.asarray(outputs, np.float64)
    if task == "MTL":
        return _per_task(to_probabilities, x)
    if task == "EXPR":
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    if task == "AU":
        return 1.0 / (1.0 + np.exp(-x))
    return x


def from_probabilities(task: str, probs: np.ndarray) -> np.ndarray:
    """Averaged probabilities -> raw-output form (log-probabilities / logits) for scoring."""
    if task == "MTL":
        return _per_task(from_probabilities, np.asarray(probs, np.float64))
    p = np.clip(probs, 1e-7, 1 - 1e-7) if task != "VA" else probs
    if task == "EXPR":
        return np.log(p)
    if task == "AU":
        return np.log(p) - np.log1p(-p)
    return p


def _per_task(fn, x: np.ndarray) -> np.ndarray:
    """`fn` applied to each task's columns of packed multi-task outputs."""
    from abaw_jax.data import mtl
    out = np.empty_like(x)
    for task, cols in mtl.OUTPUT_COLUMNS.items():
        out[..., cols] = fn(task, x[..., cols])
    return out


class Assembler:
    """Puts per-window outputs back into per-video arrays; overlapping outputs are averaged,
    in probability space when `task` is given (see the module doc), else as they come."""

    def __init__(self, videos: Sequence[Any], out_dim: int, task: str = ""):
        """`videos`: the list the windows index into (anything with num_frames, or ints)."""
        self.task = task
        self.names = [getattr(v, "name", str(i)) for i, v in enumerate(videos)]
        self.lengths = np.array([getattr(v, "num_frames", v) for v in videos], np.int64)
        self.base = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.out_dim = out_dim
        self._sums = np.zeros((int(self.base[-1]), out_dim), np.float64)
        self._counts = np.zeros(int(self.base[-1]), np.int64)

    def add(self, outputs: Any, video: Any, start: Any, frame_mask: Any) -> None:
        """Adds outputs [B, L, out_dim] of windows (video [B], start [B]) where frame_mask."""
        outputs, video = np.asarray(outputs), np.asarray(video, np.int64)
        start, frame_mask = np.asarray(start, np.int64), np.asarray(frame_mask, bool)
        if outputs.ndim != 3 or outputs.shape[2] != self.out_dim:
            raise ValueError(f"outputs must be [B, L, {self.out_dim}], got {outputs.shape}")
        b, l = outputs.shape[:2]
        if video.shape != (b,) or start.shape != (b,) or frame_mask.shape != (b, l):
            raise ValueError(
                f"video {video.shape}, start {start.shape}, frame_mask {frame_mask.shape} "
                f"do not match outputs {outputs.shape}"
            )
        rows = frame_mask.any(axis=1)
        if not rows.any():
            return
        bad = rows & ((video < 0) | (video >= len(self.lengths)))
        if bad.any():
            raise ValueError(f"video index {int(video[bad][0])} outside [0, {len(self.lengths)})")
        frames = start[:, None] + np.arange(l)
        safe_video = np.where(rows, video, 0)
        outside = frame_mask & ((frames < 0) | (frames >= self.lengths[safe_video][:, None]))
        if outside.any():
            i, j = np.argwhere(outside)[0]
            raise ValueError(
                f"video {self.names[video[i]]!r}: frame {frames[i, j]} outside its "
                f"{self.lengths[video[i]]} frames"
            )
        flat = (self.base[safe_video][:, None] + frames)[frame_mask]
        values = outputs[frame_mask].astype(np.float64)
        if self.task:
            values = to_probabilities(self.task, values)
        # Accumulate on the few distinct frames first: scattering into the whole split is slow.
        frames_u, inverse = np.unique(flat, return_inverse=True)
        acc = np.zeros((len(frames_u), self.out_dim), np.float64)
        cells = inverse[:, None] * self.out_dim + np.arange(self.out_dim)
        np.add.at(acc.reshape(-1), cells.reshape(-1), values.reshape(-1))
        self._sums[frames_u] += acc
        self._counts[frames_u] += np.bincount(inverse, minlength=len(frames_u))

    def result(self) -> list[np.ndarray]:
        """Per-video float32 [T, out_dim] averages; raises if any frame got no output."""
        missing = self._counts == 0
        if missing.any():
            first = int(np.argmax(missing))
            v = int(np.searchsorted(self.base, first, side="right")) - 1
            raise ValueError(
                f"video {self.names[v]!r}: frame {first - self.base[v]} "
                f"(and {int(missing.sum()) - 1} other frames) received no output"
            )
        mean = self._sums / self._counts[:, None]
        if self.task:
            mean = from_probabilities(self.task, mean)
        mean = mean.astype(np.float32)
        return [mean[self.base[i] : self.base[i + 1]] for i in range(len(self.lengths))]
