"""Converts MediaPipe's BlazeFace `.tflite` files into the weights shipped with the package.

    python scripts/convert_blazeface.py [--models ../shared/data/models/mediapipe] [--check]

Reads `face_detection_full_range.tflite` and `face_detection_short_range.tflite` (MediaPipe,
Apache-2.0) with the `tflite` parser (`pip install 'abaw_jax[tflite]'`) and writes their
convolution weights, still float16 as in the `.tflite` files, to
`abaw_jax/models/blazeface_weights/face_detection_<range>.abw` in the project's own format
(`abaw_jax.models.blazeface.write_weights`). It prints each file's SHA-256: the digests in
`blazeface.SHIPPED` must equal them, since every load checks them. `--check` writes nothing and
compares a fresh conversion with the shipped files byte for byte (exit status 1 when they
differ). Run it once, when MediaPipe's weights change; users never need it.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_jax.models import blazeface  # noqa: E402

DEFAULT_MODELS = ROOT.parent / "shared" / "data" / "models" / "mediapipe"


def convert(source: pathlib.Path, out: pathlib.Path) -> str:
    """Writes the weights of one `.tflite` file to `out`; returns the SHA-256 of `out`."""
    variant, params = blazeface.tflite_params(source)
    expected = f"face_detection_{variant.name}.tflite"
    if source.name != expected:
        print(f"note: {source} holds the {variant.name} network (usually named {expected})",
              file=sys.stderr)
    return blazeface.write_weights(out, variant, params, source=expected,
                                   source_sha256=hashlib.sha256(source.read_bytes()).hexdigest())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/convert_blazeface.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=str(DEFAULT_MODELS),
                        help="folder holding face_detection_{full,short}_range.tflite")
    parser.add_argument("--check", action="store_true",
                        help="compare with the shipped files instead of writing them")
    args = parser.parse_args(argv)
    models = pathlib.Path(args.models)
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        for variant, (name, digest) in blazeface.SHIPPED.items():
            source = models / f"face_detection_{variant}.tflite"
            if not source.is_file():
                print(f"error: {source}: no such file (--models)", file=sys.stderr)
                return 2
            shipped = blazeface.shipped_path(variant)
            out = pathlib.Path(tmp) / name if args.check else shipped
            out.parent.mkdir(parents=True, exist_ok=True)
            got = convert(source, out)
            size = out.stat().st_size
            if args.check:
                same = shipped.is_file() and shipped.read_bytes() == out.read_bytes()
                print(f"{variant}: {'same as' if same else 'DIFFERS from'} {shipped} "
                      f"(sha256 {got})")
                status |= 0 if same and got == digest else 1
            else:
                print(f"{variant}: wrote {out} ({size:,} bytes), sha256 {got}"
                      + ("" if got == digest else "  <- put this digest in blazeface.SHIPPED"))
    return status


if __name__ == "__main__":
    sys.exit(main())
