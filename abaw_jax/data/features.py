"""Feature store: per-video frame features in memory-mappable shards.

A store is a directory holding one feature set (one extractor, one dim, one dtype)::

    meta.json                  {"format": "abaw_jax.features/1", "dim", "dtype", "extractor", ...}
    index-p<process>.jsonl     one line per finished video: video, shard, offset, length, n_present
    shard-p<process>-<k>.bin   raw rows [*, dim] of dtype (float16 | bfloat16 | float32)
    shard-p<process>-<k>.present   one uint8 per row: 1 when the frame had a face image

Every process writes its own index and shards, so extraction can run on many hosts into one
directory. A video is committed by its index line, appended only after its rows are on disk;
rows past the last committed video are leftovers of a crash and are dropped when the writer
reopens. Readers memory-map each shard once, so any window of any video is one contiguous read.

Stores of features computed elsewhere are imported from the command line (a rerun resumes)::

    python -m abaw_jax.data.features import-npy NPY_DIR STORE [--extractor poster2]
    python -m abaw_jax.data.features import-openface CSV_DIR STORE
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from abaw_jax import files

try:
    import fcntl
except ImportError:  # Not on POSIX: writers are not guarded against a twin.
    fcntl = None

FORMAT = "abaw_jax.features/1"
DTYPES = {
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float32": np.dtype(np.float32),
}
DEFAULT_SHARD_BYTES = 1 << 30
NAN_POLICIES = ("error", "zero")

# OpenFace 2.0 writes 17 AU intensities; their order here is the feature order.
OPENFACE_AU_COLUMNS = (
    "AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r", "AU12_r",
    "AU14_r", "AU15_r", "AU17_r", "AU20_r", "AU23_r", "AU25_r", "AU26_r", "AU45_r",
)

_SHARD_RE = re.compile(r"shard-p(\d+)-(\d+)\.bin")
_INDEX_RE = re.compile(r"index-p(\d+)\.jsonl")
_INDEX_KEYS = {"video": str, "shard": str, "offset": int, "length": int, "n_present": int}


class StoreError(ValueError):
    """A feature store, or input written to it, is malformed; the message names where."""


def store_dtype(dtype: Any) -> np.dtype:
    """Returns the numpy dtype for a store dtype name (or dtype); raises StoreError otherwise."""
    try:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except TypeError:
        name = str(dtype)
    if name not in DTYPES:
        raise StoreError(f"unsupported feature dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _shard_name(process_index: int, k: int) -> str:
    return f"shard-p{process_index}-{k:05d}.bin"


def _present_name(shard: str) -> str:
    return shard[: -len(".bin")] + ".present"


def _index_name(process_index: int) -> str:
    return f"index-p{process_index}.jsonl"


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One committed video: where its rows live."""

    video: str
    shard: str
    offset: int
    length: int
    n_present: int
    where: str  # "index-pN.jsonl line L", for error messages


def _read_index(path: pathlib.Path) -> tuple[list[_Entry], int]:
    """Parses an index file; returns its entries and the byte length of its committed lines.

    A last line without its newline was being appended when a writer stopped: it is not
    committed, so it is left out rather than reported.
    """
    data = path.read_bytes()
    committed = data.rfind(b"\n") + 1
    entries = []
    for lineno, raw in enumerate(data[:committed].split(b"\n")[:-1], start=1):
        where = f"{path.name} line {lineno}"
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{path}: line {lineno} is not valid JSON ({e})") from None
        if not isinstance(record, dict):
            raise StoreError(f"{path}: line {lineno} is not a JSON object")
        for key, kind in _INDEX_KEYS.items():
            value = record.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise StoreError(
                    f"{path}: line {lineno}: key {key!r} must be {kind.__name__}, got {value!r}"
                )
        if not _SHARD_RE.fullmatch(record["shard"]):
            raise StoreError(f"{path}: line {lineno}: bad shard name {record['shard']!r}")
        if record["offset"] < 0 or record["length"] <= 0:
            raise StoreError(
                f"{path}: line {lineno}: offset must be >= 0 and length > 0, "
                f"got offset {record['offset']} length {record['length']}"
            )
        if not 0 <= record["n_present"] <= record["length"]:
            raise StoreError(
                f"{path}: line {lineno}: n_present {record['n_present']} outside "
                f"[0, length {record['length']}]"
            )
        entries.append(_Entry(**{k: record[k] for k in _INDEX_KEYS}, where=where))
    return entries, committed


def _read_meta(path: pathlib.Path) -> dict:
    """Reads and checks meta.json of the store at `path`."""
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise StoreError(f"{path}: meta.json missing, not a feature store")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise StoreError(f"{meta_path}: expected a JSON object")
    if meta.get("format") != FORMAT:
        raise StoreError(
            f"{meta_path}: key 'format' is {meta.get('format')!r}, expected {FORMAT!r}"
        )
    dim = meta.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise StoreError(f"{meta_path}: key 'dim' must be a positive int, got {dim!r}")
    if meta.get("dtype") not in DTYPES:
        raise StoreError(
            f"{meta_path}: key 'dtype' is {meta.get('dtype')!r}, expected one of {sorted(DTYPES)}"
        )
    if not isinstance(meta.get("extractor", ""), str):
        raise StoreError(f"{meta_path}: key 'extractor' must be a string")
    return meta


def _fsync(f) -> None:
    f.flush()
    # Data and size reach the disk; timestamps need not.
    getattr(os, "fdatasync", os.fsync)(f.fileno())


# What to do when a store was written with other settings than a writer's.
_MISMATCH_HINT = ("; to keep it, rerun with the settings it was written with (its meta.json "
                  "'params'); to replace it, delete {path} or write to another folder")


class FeatureStoreWriter:
    """Appends videos to a store, as one of possibly many processes; resumable.

    Reopening a store continues after the last committed video of this process: `has(video)`
    says which videos are done, and rows left behind by a crash are truncated away.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        dim: int,
        dtype: Any = "float16",
        extractor: str = "",
        process_index: int = 0,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        nan_policy: str = "error",
        params: Mapping[str, Any] | None = None,
    ):
        """Opens (creating if needed) the store at `path` for process `process_index`.

        Args:
          dim: feature size; must match meta.json when the store exists.
          dtype: "float16" | "bfloat16" | "float32" on disk; must match meta.json.
          extractor: name of what made the features, recorded in meta.json.
          shard_bytes: a new shard starts once the current one would exceed this.
          nan_policy: "error" rejects a video with NaN/inf features; "zero" replaces them by 0
            and counts them in `num_nonfinite` (and in the video's index line).
          params: creation parameters recorded in meta.json (e.g. the extraction config).
        """
        self.path = pathlib.Path(path)
        if not _is_int(dim) or dim <= 0:
            raise StoreError(f"{self.path}: dim must be a positive int, got {dim!r}")
        if nan_policy not in NAN_POLICIES:
            raise StoreError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if not _is_int(process_index) or process_index < 0:
            raise StoreError(f"process_index must be an int >= 0, got {process_index!r}")
        self.dim = int(dim)
        self.dtype = store_dtype(dtype)
        self.extractor = extractor
        self.process_index = int(process_index)
        self.shard_bytes = int(shard_bytes)
        self.nan_policy = nan_policy
        self.num_nonfinite = 0
        self._row_bytes = dim * self.dtype.itemsize
        self._closed = True

        self.path.mkdir(parents=True, exist_ok=True)
        self._init_meta(params)

        self._index_path = self.path / _index_name(process_index)
        self._index = open(self._index_path, "a+b")
        self._closed = False
        try:
            self._lock_index()
            self._resume()
        except BaseException:
            self.close()
            raise

    def _init_meta(self, params: Mapping[str, Any] | None) -> None:
        meta_path = self.path / "meta.json"
        if not meta_path.exists():
            meta = {
                "format": FORMAT,
                "dim": self.dim,
                "dtype": self.dtype.name,
                "extractor": self.extractor,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "shard_bytes": self.shard_bytes,
                "params": dict(params or {}),
            }
            # Several processes may create the store at once: the temp name is per process.
            files.write_json(meta_path, meta, indent=1)
        meta = _read_meta(self.path)
        for key, mine in (("dim", self.dim), ("dtype", self.dtype.name)):
            if meta[key] != mine:
                raise StoreError(
                    f"{meta_path}: store has {key} {meta[key]!r}, writer was opened with {mine!r}"
                    f"{_MISMATCH_HINT.format(path=self.path)}"
                )
        if self.extractor and meta.get("extractor") and meta["extractor"] != self.extractor:
            raise StoreError(
                f"{meta_path}: store has extractor {meta['extractor']!r}, "
                f"writer was opened with {self.extractor!r}{_MISMATCH_HINT.format(path=self.path)}"
            )
        self.meta = meta

    def _lock_index(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._index.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"{self._index_path}: another writer with process_index "
                f"{self.process_index} has this store open"
            ) from None

    def _resume(self) -> None:
        entries, committed = _read_index(self._index_path)
        if committed != self._index_path.stat().st_size:
            self._index.truncate(committed)
        self._lines = len(entries)
        self._done: dict[str, str] = {}
        for e in entries:
            if e.video in self._done:
                raise StoreError(
                    f"{self.path}: video {e.video!r} appears twice "
                    f"({self._done[e.video]}, {e.where})"
                )
            self._done[e.video] = e.where
        # Videos of the other processes, as of now, so that a rerun with a different process
        # layout does not write a video twice.
        self._others: dict[str, str] = {}
        for index in sorted(self.path.glob("index-p*.jsonl")):
            if index != self._index_path and _INDEX_RE.fullmatch(index.name):
                for e in _read_index(index)[0]:
                    self._others.setdefault(e.video, e.where)

        # Continue in the highest shard that holds committed rows; later shards of this
        # process hold only uncommitted rows.
        shard_rows: dict[str, int] = collections.defaultdict(int)
        for e in entries:
            m = _SHARD_RE.fullmatch(e.shard)
            if int(m.group(1)) != self.process_index:
                raise StoreError(
                    f"{self._index_path}: {e.where} names shard {e.shard!r} of another process"
                )
            shard_rows[e.shard] = max(shard_rows[e.shard], e.offset + e.length)
        k = max((int(_SHARD_RE.fullmatch(s).group(2)) for s in shard_rows), default=0)
        for stale in self.path.glob(f"shard-p{self.process_index}-*"):
            m = re.fullmatch(rf"shard-p{self.process_index}-(\d+)\.(bin|present)", stale.name)
            if m and int(m.group(1)) > k:
                stale.unlink()
        self._shard = _shard_name(self.process_index, k)
        self._rows = shard_rows.get(self._shard, 0)
        self._open_shard(truncate=self._rows == 0)

    def _open_shard(self, *, truncate: bool) -> None:
        bin_path = self.path / self._shard
        present_path = self.path / _present_name(self._shard)
        if not truncate:
            for p, need in ((bin_path, self._rows * self._row_bytes), (present_path, self._rows)):
                size = p.stat().st_size if p.exists() else -1
                if size < need:
                    raise StoreError(
                        f"{p}: holds {max(size, 0)} bytes but {self._index_path.name} commits "
                        f"{need}; the store lost data"
                    )
        mode = "w+b" if truncate else "r+b"
        self._bin = open(bin_path, mode)
        self._present = open(present_path, mode)
        self._truncate_to_committed()

    def _truncate_to_committed(self) -> None:
        """Drops rows past the last committed video (left by a crash or a failed write)."""
        self._bin.truncate(self._rows * self._row_bytes)
        self._present.truncate(self._rows)
        self._bin.seek(self._rows * self._row_bytes)
        self._present.seek(self._rows)

    def has(self, video: str) -> bool:
        """Whether `video` is already committed (by this process, or by another at open time)."""
        return video in self._done or video in self._others

    def write(self, video: str, features: np.ndarray, present: np.ndarray | None = None) -> None:
        """Appends all frames of one video: features [T, dim], present bool [T] (default all)."""
        if self._closed:
            raise StoreError(f"{self.path}: writer is closed")
        if not isinstance(video, str) or not video:
            raise StoreError(f"{self.path}: video name must be a non-empty string, got {video!r}")
        if self.has(video):
            where = self._done.get(video) or self._others[video]
            raise StoreError(f"{self.path}: video {video!r} is already in the store ({where})")
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim or features.shape[0] == 0:
            raise StoreError(
                f"{self.path}: video {video!r}: features must be [T > 0, {self.dim}], "
                f"got shape {features.shape}"
            )
        length = features.shape[0]
        if present is None:
            present = np.ones(length, np.uint8)
        else:
            present = np.asarray(present)
            if present.shape != (length,):
                raise StoreError(
                    f"{self.path}: video {video!r}: present must be [{length}], "
                    f"got shape {present.shape}"
                )
            if present.dtype != np.bool_ and not np.isin(present, (0, 1)).all():
                raise StoreError(f"{self.path}: video {video!r}: present must be 0/1 or bool")
            present = present.astype(np.uint8)
        # Check after the cast: float32 values beyond float16 range become inf.
        with np.errstate(over="ignore", invalid="ignore"):
            rows = np.ascontiguousarray(features, dtype=self.dtype)
        finite = np.isfinite(rows)
        n_bad = rows.size - int(np.count_nonzero(finite))
        if n_bad:
            if self.nan_policy == "error":
                frame = int(np.argmin(finite.all(axis=1)))
                raise StoreError(
                    f"{self.path}: video {video!r}: {n_bad} NaN/inf feature values "
                    f"(first at frame index {frame}, after conversion to {self.dtype.name})"
                )
            rows = np.where(finite, rows, np.zeros((), self.dtype))
            self.num_nonfinite += n_bad

        nbytes = length * self._row_bytes
        if self._rows > 0 and (self._rows * self._row_bytes + nbytes) > self.shard_bytes:
            self._bin.close()
            self._present.close()
            k = int(_SHARD_RE.fullmatch(self._shard).group(2)) + 1
            self._shard = _shard_name(self.process_index, k)
            self._rows = 0
            self._open_shard(truncate=True)
        try:
            self._bin.write(rows.reshape(-1).view(np.uint8).data)
            self._present.write(present.tobytes())
            _fsync(self._bin)
            _fsync(self._present)
        except BaseException:
            self._truncate_to_committed()
            raise
        record = {
            "video": video,
            "shard": self._shard,
            "offset": self._rows,
            "length": length,
            "n_present": int(present.sum()),
        }
        if n_bad:
            record["n_nonfinite"] = n_bad
        self._index.write((json.dumps(record) + "\n").encode())
        _fsync(self._index)
        self._rows += length
        self._lines += 1
        self._done[video] = f"{self._index_path.name} line {self._lines}"

    def close(self) -> None:
        """Closes the files; committed videos stay readable."""
        if self._closed:
            return
        self._closed = True
        for name in ("_bin", "_present", "_index"):
            f = getattr(self, name, None)
            if f is not None:
                f.close()

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FeatureStore:
    """Memory-mapped reader of a store written by one or more FeatureStoreWriters."""

    def __init__(self, path: str | os.PathLike):
        """Opens the store at `path` and checks its index against its shards."""
        self.path = pathlib.Path(path)
        if not self.path.is_dir():
            raise StoreError(f"{self.path}: feature store directory does not exist")
        self.meta = _read_meta(self.path)
        self.dim: int = self.meta["dim"]
        self.dtype: np.dtype = DTYPES[self.meta["dtype"]]
        self.extractor: str = self.meta.get("extractor", "")

        entries: dict[str, _Entry] = {}
        # Each index file: (path, videos listed, bytes after its last complete line).
        self.index_files: list[tuple[pathlib.Path, int, int]] = []
        for index in sorted(self.path.glob("index-p*.jsonl")):
            if not _INDEX_RE.fullmatch(index.name):
                continue
            listed, committed = _read_index(index)
            self.index_files.append((index, len(listed), index.stat().st_size - committed))
            for e in listed:
                if e.video in entries:
                    raise StoreError(
                        f"{self.path}: video {e.video!r} appears twice "
                        f"({entries[e.video].where}, {e.where})"
                    )
                entries[e.video] = e

        by_shard: dict[str, list[_Entry]] = collections.defaultdict(list)
        for e in entries.values():
            by_shard[e.shard].append(e)
        self._rows: dict[str, np.ndarray] = {}
        present: dict[str, np.ndarray] = {}
        row_bytes = self.dim * self.dtype.itemsize
        for shard, group in sorted(by_shard.items()):
            group.sort(key=lambda e: e.offset)
            for a, b in zip(group, group[1:]):
                if a.offset + a.length > b.offset:
                    raise StoreError(
                        f"{self.path}: videos {a.video!r} ({a.where}) and {b.video!r} ({b.where}) "
                        f"overlap in {shard}"
                    )
            last = group[-1]
            need = last.offset + last.length
            bin_path = self.path / shard
            present_path = self.path / _present_name(shard)
            for p in (bin_path, present_path):
                if not p.is_file():
                    raise StoreError(
                        f"{self.path}: {p.name} is missing "
                        f"(needed by video {last.video!r}, {last.where})"
                    )
            rows = bin_path.stat().st_size // row_bytes
            if rows < need:
                raise StoreError(
                    f"{self.path}: {shard} holds {rows} rows but the index needs {need} "
                    f"(video {last.video!r}, {last.where}); the shard is truncated"
                )
            n_present_bytes = present_path.stat().st_size
            if n_present_bytes < need:
                raise StoreError(
                    f"{self.path}: {present_path.name} holds {n_present_bytes} rows but the index "
                    f"needs {need} (video {last.video!r}, {last.where})"
                )
            self._rows[shard] = np.memmap(
                bin_path, dtype=self.dtype, mode="r", shape=(need, self.dim)
            )
            flags = np.fromfile(present_path, dtype=np.uint8, count=need)
            for e in group:
                p = flags[e.offset : e.offset + e.length].astype(bool)
                if int(p.sum()) != e.n_present:
                    raise StoreError(
                        f"{self.path}: video {e.video!r} ({e.where}) says n_present {e.n_present} "
                        f"but {present_path.name} has {int(p.sum())}"
                    )
                p.flags.writeable = False
                present[e.video] = p
        self._entries = entries
        self._present = present
        self.videos: list[str] = sorted(entries)

    def _entry(self, video: str) -> _Entry:
        try:
            return self._entries[video]
        except KeyError:
            raise StoreError(f"{self.path}: video {video!r} is not in the feature store") from None

    def __contains__(self, video: str) -> bool:
        return video in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"FeatureStore({str(self.path)!r}, videos={len(self)}, dim={self.dim}, "
            f"dtype={self.dtype.name})"
        )

    def num_frames(self, video: str) -> int:
        """Number of frames stored for `video`."""
        return self._entry(video).length

    def read(self, video: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of `video` as a read-only memory-mapped view [stop - start, dim]."""
        e = self._entry(video)
        stop = e.length if stop is None else stop
        if not 0 <= start <= stop <= e.length:
            raise StoreError(
                f"{self.path}: video {video!r}: frames [{start}, {stop}) outside [0, {e.length})"
            )
        rows = self._rows[e.shard][e.offset + start : e.offset + stop]
        return rows.view(np.ndarray)

    def present(self, video: str) -> np.ndarray:
        """Bool [T]: which frames of `video` had a face image (read-only)."""
        self._entry(video)
        return self._present[video]


class FeatureSets:
    """Several stores read together, aligned by frame (one feature set per name)."""

    def __init__(self, paths: Mapping[str, str | os.PathLike | FeatureStore]):
        """Opens each named store (a path or an open FeatureStore)."""
        if not paths:
            raise StoreError("FeatureSets needs at least one store")
        self.stores: dict[str, FeatureStore] = {
            name: p if isinstance(p, FeatureStore) else FeatureStore(p) for name, p in paths.items()
        }
        self.names: list[str] = list(self.stores)
        self.dims: dict[str, int] = {n: s.dim for n, s in self.stores.items()}
        common = set.intersection(*(set(s.videos) for s in self.stores.values()))
        self.videos: list[str] = sorted(common)

    def __contains__(self, video: str) -> bool:
        return all(video in s for s in self.stores.values())

    def _check(self, video: str) -> int:
        lengths = {}
        for name, store in self.stores.items():
            if video not in store:
                raise StoreError(
                    f"feature set {name!r} ({store.path}) has no video {video!r}"
                )
            lengths[name] = store.num_frames(video)
        if len(set(lengths.values())) > 1:
            raise StoreError(
                f"video {video!r} has different frame counts across feature sets: {lengths}"
            )
        return next(iter(lengths.values()))

    def num_frames(self, video: str) -> int:
        """Number of frames of `video`, the same in every set (checked)."""
        return self._check(video)

    def read(self, video: str, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Rows [start, stop) of `video` from every set, by name."""
        self._check(video)
        return {name: s.read(video, start, stop) for name, s in self.stores.items()}

    def present(self, video: str) -> np.ndarray:
        """Bool [T]: frames present in every set."""
        self._check(video)
        return np.logical_and.reduce([s.present(video) for s in self.stores.values()])


def _openface_csvs(
    csv_paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike],
) -> list[pathlib.Path]:
    if isinstance(csv_paths_or_dir, (str, os.PathLike)):
        p = pathlib.Path(csv_paths_or_dir)
        if p.is_dir():
            paths = sorted(p.glob("*.csv"))
            if not paths:
                raise StoreError(f"{p}: no .csv files")
            return paths
        paths = [p]
    else:
        paths = [pathlib.Path(p) for p in csv_paths_or_dir]
    for p in paths:
        if not p.is_file():
            raise StoreError(f"{p}: OpenFace CSV not found")
    stems = collections.Counter(p.stem for p in paths)
    dup = [s for s, n in stems.items() if n > 1]
    if dup:
        raise StoreError(f"several OpenFace CSVs for video(s) {dup}")
    return paths


def read_openface_csv(
    path: str | os.PathLike, num_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reads one OpenFace 2.0 FeatureExtraction CSV: AU intensities float32 [T, 17], present [T].

    Rows are placed by their 1-based `frame`; frames with no row or `success` 0 are not
    present and get zeros; when several faces share a frame the most confident row wins.
    T is `num_frames` when given, else the largest frame number.
    """
    path = pathlib.Path(path)
    with open(path, newline="") as f:
        header_line = f.readline()
        header = [c.strip() for c in header_line.rstrip("\r\n").split(",")]
        columns = {name: i for i, name in enumerate(header)}
        needed = ("frame", "confidence", "success", *OPENFACE_AU_COLUMNS)
        missing = [c for c in needed if c not in columns]
        if missing:
            raise StoreError(f"{path}: line 1: header lacks OpenFace column(s) {missing}")
        i_frame, i_conf, i_success = columns["frame"], columns["confidence"], columns["success"]
        i_aus = [columns[c] for c in OPENFACE_AU_COLUMNS]
        frames, confidence, success, aus, lines = [], [], [], [], []
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cells = line.split(",")
            if len(cells) != len(header):
                raise StoreError(
                    f"{path}: line {lineno}: {len(cells)} fields, the header has {len(header)}"
                )
            try:
                frame = float(cells[i_frame])
                conf = float(cells[i_conf])
                ok = float(cells[i_success])
                values = [float(cells[i]) for i in i_aus]
            except ValueError as e:
                raise StoreError(f"{path}: line {lineno}: {e}") from None
            if frame != int(frame) or frame < 1:
                raise StoreError(
                    f"{path}: line {lineno}: frame {cells[i_frame].strip()!r} "
                    f"is not a 1-based integer"
                )
            if ok not in (0.0, 1.0):
                raise StoreError(
                    f"{path}: line {lineno}: success {cells[i_success].strip()!r} is not 0 or 1"
                )
            if not np.isfinite(values).all() or not np.isfinite(conf):
                raise StoreError(f"{path}: line {lineno}: NaN/inf in confidence or AU intensities")
            if num_frames is not None and frame > num_frames:
                raise StoreError(
                    f"{path}: line {lineno}: frame {int(frame)} beyond the video's "
                    f"{num_frames} frames"
                )
            frames.append(int(frame) - 1)
            confidence.append(conf)
            success.append(ok == 1.0)
            aus.append(values)
            lines.append(lineno)
    if not frames:
        raise StoreError(f"{path}: no data rows after the header")
    frames_a = np.asarray(frames)
    length = int(frames_a.max()) + 1 if num_frames is None else num_frames
    # Most confident row per frame: sort by (frame, -confidence, line), keep the first of each.
    order = np.lexsort((np.asarray(lines), -np.asarray(confidence), frames_a))
    keep = order[np.r_[True, frames_a[order][1:] != frames_a[order][:-1]]]
    features = np.zeros((length, len(OPENFACE_AU_COLUMNS)), np.float32)
    present = np.zeros(length, bool)
    ok_rows = keep[np.asarray(success)[keep]]
    features[frames_a[ok_rows]] = np.asarray(aus, np.float32)[ok_rows]
    present[frames_a[ok_rows]] = True
    return features, present


def import_openface(
    csv_paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    dtype: Any = "float32",
    num_frames: Mapping[str, int] | None = None,
    process_index: int = 0,
) -> None:
    """Imports OpenFace 2.0 CSVs (one per video, named <video>.csv) as a 17-d AU-intensity store.

    `num_frames` (video -> frame count) pads videos whose last frames have no CSV row; videos
    already in the store are skipped, so an interrupted import can be rerun.
    """
    paths = _openface_csvs(csv_paths_or_dir)

    def read(p: pathlib.Path):
        return read_openface_csv(p, None if num_frames is None else num_frames.get(p.stem))

    # The first CSV is read before the store is created: a folder of CSVs of another form
    # stops with its error and leaves no empty store that a later command would take as one.
    first = read(paths[0]) if paths else None
    params = {"columns": list(OPENFACE_AU_COLUMNS), "source": "OpenFace 2.0 FeatureExtraction CSV"}
    with FeatureStoreWriter(
        out, dim=len(OPENFACE_AU_COLUMNS), dtype=dtype, extractor="openface_au_r",
        process_index=process_index, params=params,
    ) as writer:
        for k, p in enumerate(paths):
            if not writer.has(p.stem):
                writer.write(p.stem, *(first if k == 0 else read(p)))


def import_npy(
    npy_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: Any = "float16",
    extractor: str = "npy",
    process_index: int = 0,
    nan_policy: str = "error",
) -> None:
    """Imports `<video>.npy` [T, D] files (with optional `<video>.present.npy` [T]) into a store.

    Videos already in the store are skipped, so an interrupted import can be rerun.
    """
    npy_dir = pathlib.Path(npy_dir)
    if not npy_dir.is_dir():
        raise StoreError(f"{npy_dir}: not a directory")
    files = sorted(p for p in npy_dir.glob("*.npy") if not p.name.endswith(".present.npy"))
    videos = {p.name[: -len(".npy")] for p in files}
    for p in npy_dir.glob("*.present.npy"):
        if p.name[: -len(".present.npy")] not in videos:
            raise StoreError(f"{p}: no matching features file {p.name[:-len('.present.npy')]}.npy")
    if not files:
        raise StoreError(f"{npy_dir}: no .npy feature files")
    dims = set()
    for p in files:
        try:
            array = np.load(p, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise StoreError(f"{p}: not a readable .npy array ({e})") from None
        if array.ndim != 2:
            raise StoreError(f"{p}: expected a [T, D] array, got shape {array.shape}")
        dims.add(array.shape[1])
    if len(dims) != 1:
        raise StoreError(f"{npy_dir}: the .npy files have different feature dims {sorted(dims)}")
    with FeatureStoreWriter(
        out, dim=dims.pop(), dtype=dtype, extractor=extractor, process_index=process_index,
        nan_policy=nan_policy, params={"source": str(npy_dir)},
    ) as writer:
        for p in files:
            video = p.name[: -len(".npy")]
            if writer.has(video):
                continue
            features = np.load(p, mmap_mode="r")
            present_path = p.with_name(video + ".present.npy")
            present = np.load(present_path) if present_path.exists() else None
            if present is not None and present.shape != (features.shape[0],):
                raise StoreError(
                    f"{present_path}: shape {present.shape} does not match {p.name} "
                    f"({features.shape[0]} frames)"
                )
            writer.write(video, features, present)


def main(argv: list[str] | None = None) -> int:
    """`import-npy SRC DST` / `import-openface SRC DST`; bad input: one `error:` line."""
    import argparse
    import sys
    p = argparse.ArgumentParser(
        prog="python -m abaw_jax.data.features",
        description="Import features computed elsewhere into a feature store (rerunning "
                    "resumes: videos already in the store are skipped).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    npy = sub.add_parser("import-npy", help="a folder of <video>.npy [T, D] arrays (optional "
                         "<video>.present.npy [T]), e.g. POSTER2 features",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    npy.add_argument("src", help="folder of <video>.npy files")
    npy.add_argument("dst", help="the store directory to write")
    npy.add_argument("--extractor", default="npy", help="the name recorded in meta.json")
    npy.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    openface = sub.add_parser("import-openface", help="a folder of OpenFace 2.0 "
                              "FeatureExtraction CSVs, <video>.csv (the 17 AU intensities)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    openface.add_argument("src", help="folder of <video>.csv files (or one CSV)")
    openface.add_argument("dst", help="the store directory to write")
    openface.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = p.parse_args(argv)
    try:
        if args.command == "import-npy":
            import_npy(args.src, args.dst, dtype=args.dtype, extractor=args.extractor)
        else:
            import_openface(args.src, args.dst, dtype=args.dtype)
    except (StoreError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    store = FeatureStore(args.dst)
    print(f"wrote {args.dst} ({len(store.videos)} videos, dim {store.dim})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
