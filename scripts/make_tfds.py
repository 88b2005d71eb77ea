"""A folder of face images (one subfolder per class) as a TFDS dataset in the ArrayRecord format.

  pip install -e ".[tfds-prepare]"          # TensorFlow, needed to write the dataset only
  python scripts/make_tfds.py --root /data/ckplus48 --name ckplus48 \\
      --data_dir ~/tensorflow_datasets --val_fraction 0.2 --group_pattern '^(S\\d+)_'
  python -m abaw_jax.pretrain --config configs/mae_face.py:ckplus --workdir runs/mae \\
      --config.data.source=tfds --config.data.tfds_name=ckplus48 \\
      --config.data.root=$HOME/tensorflow_datasets

The splits are the ones ``--config.data.source=folder`` makes from the same ``--mapping``,
``--val_root``, ``--val_fraction``, ``--group_pattern`` and ``--split_seed`` (subjects held out
together), written as ``train`` and ``val``. Examples keep the folder source's order (TFDS
shuffling is off; grain shuffles when reading), so record ``i`` of a split is image ``i`` of the
folder source and a run with the same seed sees the same batches from either.

Each image is decoded as the folder source decodes it (``image_sources.read_rgb``) and stored
losslessly as PNG: one channel when every file is 8-bit grey, three otherwise. Features:
``image``, ``label`` (``ClassLabel``), ``file_name`` (``<class folder>/<file>``).

Writing imports TensorFlow (TFDS's writer needs it); every check of the folder runs before that,
so a bad folder fails fast. Reading the result (``tfds.data_source``, as ``abaw_jax`` does) needs
no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_jax.data import affwild2  # noqa: E402
from abaw_jax.data import image_sources  # noqa: E402
from abaw_jax.data.image_sources import ImageSourceError  # noqa: E402

# Pillow modes that decode to one 8-bit grey channel repeated three times by read_rgb.
GREY_MODES = ("L", "1")


def default_data_dir() -> pathlib.Path:
    """TFDS's own default: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return pathlib.Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def parse_mapping(mapping: str | Mapping[str, int] | None) -> str | dict[str, int] | None:
    """``""`` / None (sorted folders), a layout name of ``image_sources.LAYOUTS``, or JSON."""
    if not mapping:
        return None
    if isinstance(mapping, Mapping):
        return {str(k): int(v) for k, v in mapping.items()}
    if mapping in image_sources.LAYOUTS:
        return mapping
    try:
        parsed = json.loads(mapping)
    except json.JSONDecodeError:
        raise ImageSourceError(
            f"mapping {mapping!r} is neither a layout ({sorted(image_sources.LAYOUTS)}) "
            f"nor JSON {{folder: class}}") from None
    if not isinstance(parsed, dict):
        raise ImageSourceError(f"mapping {mapping!r}: JSON must be an object {{folder: class}}")
    return {str(k): int(v) for k, v in parsed.items()}


def folder_splits(
    root: str | os.PathLike, *, mapping=None, val_root: str | os.PathLike | None = None,
    val_fraction: float = 0.0, group_pattern: str = r"^(.*)$", split_seed: int = 0,
) -> tuple[image_sources.FileImages, image_sources.FileImages, tuple[str, ...]]:
    """``(train, val, class_names)``: the sources ``--config.data.source=folder`` trains on.

    ``val`` is empty when neither ``val_root`` nor ``val_fraction`` is given. ``class_names[i]``
    names label ``i``: the sorted folders, the 8 Aff-Wild2 EXPR classes for a layout name, or
    for a JSON mapping the folders mapped to ``i`` (``class_<i>`` for an unused index).
    """
    mapping = parse_mapping(mapping)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source = image_sources.ImageFolder(root, mapping)
    if val_root:
        val = image_sources.ImageFolder(val_root, mapping)
        if mapping is None and val.classes != source.classes:
            # Labels come from each folder's own sorted subfolders: different folder sets would
            # give one class two labels, which one ClassLabel cannot describe.
            raise ImageSourceError(
                f"{val.root}: class folders {list(val.classes)} differ from {source.root}'s "
                f"{list(source.classes)}; give a mapping so that both use the same labels")
        train = source
    elif val_fraction > 0:
        train, val, _ = image_sources.split_by_group(
            source, val_fraction, pattern=group_pattern, seed=split_seed)
    else:
        train, val = source, source.subset([])
    if mapping is None:
        names = source.classes
    elif isinstance(mapping, str):
        names = affwild2.EXPR_CLASSES
    else:
        folders_of: dict[int, list[str]] = {}
        for folder, label in mapping.items():
            folders_of.setdefault(label, []).append(folder)
        size = max(mapping.values()) + 1
        names = tuple("+".join(sorted(folders_of[i])) if i in folders_of else f"class_{i}"
                      for i in range(size))
    return train, val, tuple(names)


def channels_of(paths: Sequence[pathlib.Path]) -> int:
    """1 when every file is 8-bit grey, else 3; reads headers only (fast on large folders).

    Raises ``ImageSourceError`` naming the first file that is not an image.
    """
    grey = True
    for path in paths:
        try:
            with Image.open(path) as img:
                mode = img.mode
        except (OSError, ValueError) as e:
            raise ImageSourceError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
        grey = grey and mode in GREY_MODES
    return 1 if grey else 3


def _examples(source: image_sources.FileImages, channels: int) -> Iterator[tuple[str, dict]]:
    """``(key, example)`` pairs in the source's order, decoded as the folder source decodes."""
    for path, label in zip(source.paths, source.labels):
        image = image_sources.read_rgb(path)
        name = f"{path.parent.name}/{path.name}"
        yield name, {"image": image[:, :, :channels], "label": int(label), "file_name": name}


def prepare(
    root: str | os.PathLike, name: str, data_dir: str | os.PathLike | None = None, *,
    mapping=None, val_root: str | os.PathLike | None = None, val_fraction: float = 0.0,
    group_pattern: str = r"^(.*)$", split_seed: int = 0, version: str = "1.0.0",
) -> dict[str, int]:
    """Writes the folder as TFDS dataset ``name`` under ``data_dir``; returns images per split.

    The splits are ``train`` and, when anything is held out, ``val`` (the configs' defaults).
    Raises ``ImageSourceError`` naming the path for a missing or empty folder, a folder without
    class subfolders, a file that is not an image (checked before writing starts) or cannot be
    decoded (found while writing; nothing is left behind), or a dataset already written there.
    """
    # TFDS's own name and version forms: anything else cannot be read back by name.
    if not re.fullmatch(r"[a-zA-Z]\w*", name):
        raise ImageSourceError(f"dataset name {name!r}: use a letter, then letters, digits or _")
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ImageSourceError(f"version {version!r}: use MAJOR.MINOR.PATCH, e.g. 1.0.0")
    data_dir = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
    target = data_dir / name / version
    if target.exists():
        raise ImageSourceError(f"{target}: dataset {name} {version} already exists; remove it "
                               f"or pass another --version")
    train, val, names = folder_splits(root, mapping=mapping, val_root=val_root,
                                      val_fraction=val_fraction, group_pattern=group_pattern,
                                      split_seed=split_seed)
    channels = channels_of(train.paths + val.paths)
    splits = {"train": train}
    if len(val):
        splits["val"] = val

    import tensorflow_datasets as tfds  # reads no TensorFlow; the writer below imports it
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, channels), encoding_format="png"),
        "label": tfds.features.ClassLabel(names=list(names)),
        "file_name": tfds.features.Text(),
    })
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=version, features=features, data_dir=str(data_dir),
        split_datasets={split: _examples(src, channels) for split, src in splits.items()},
        description=f"Face images of {pathlib.Path(root).expanduser()} by class folder "
                    f"(scripts/make_tfds.py).",
        file_format="array_record", disable_shuffling=True)
    return {split: len(src) for split, src in splits.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 with a one-line error for bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the image folder: <root>/<class>/<image>")
    parser.add_argument("--name", required=True, help="the TFDS dataset name (config.data.tfds_name)")
    parser.add_argument("--data_dir", default="",
                        help="where TFDS datasets live (config.data.root); default $TFDS_DATA_DIR "
                             "or ~/tensorflow_datasets")
    parser.add_argument("--mapping", default="", help="folder -> class: '' sorted folders, "
                        "'names' / 'rafdb' / 'affectnet', or JSON (as config.data.mapping)")
    parser.add_argument("--val_root", default="", help="a separate validation folder")
    parser.add_argument("--val_fraction", type=float, default=0.0,
                        help="else hold out this fraction of groups as the val split")
    parser.add_argument("--group_pattern", default=r"^(.*)$",
                        help="regex on file names whose first group is the group (subject)")
    parser.add_argument("--split_seed", type=int, default=0)
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args(argv)
    data_dir = pathlib.Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    try:
        counts = prepare(args.root, args.name, data_dir, mapping=args.mapping,
                         val_root=args.val_root or None, val_fraction=args.val_fraction,
                         group_pattern=args.group_pattern, split_seed=args.split_seed,
                         version=args.version)
    except (ImageSourceError, ValueError) as e:
        print(f"make_tfds: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.name} {args.version} to {data_dir / args.name / args.version}: "
          + ", ".join(f"{split} {n} images" for split, n in counts.items()))
    flags = ["--config.data.source=tfds", f"--config.data.tfds_name={args.name}",
             f"--config.data.root={data_dir}"]
    if "val" not in counts:
        flags.append("--config.data.val_split=")
    print("train on it with: python -m abaw_jax.pretrain ... " + " ".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
