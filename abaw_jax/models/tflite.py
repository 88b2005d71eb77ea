"""Reading a TensorFlow Lite model file: its graph and its constant tensors, as numpy.

A ``.tflite`` file is a flatbuffer (file identifier ``TFL3``): operator codes, subgraphs of
tensors and operators, and buffers holding the constant data. The ``tflite`` package (PyPI) is the
generated flatbuffer reader; this module turns what it reads into plain Python: a
:class:`Graph` with the operators in execution order, and the constant tensors as numpy arrays
keyed by tensor name. MediaPipe's face models store their weights as float16 buffers with a
``DEQUANTIZE`` operator in front of each; :func:`read` resolves those, so ``tensors`` holds the
float32 values the interpreter computes with, under the name of the dequantized tensor.

Nothing here runs the model: :mod:`abaw_jax.models.blazeface` builds the network in Flax and
takes its weights from :func:`read`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

# tflite.TensorType values (schema.fbs) and the numpy dtypes they hold.
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
           7: np.int16, 9: np.int8, 10: np.float64}


class TFLiteError(ValueError):
    """A file that is not a readable TensorFlow Lite model; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One tensor of the graph: its name, shape and dtype; `data` for constants, else None."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: Any
    data: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Operator:
    """One operator: its builtin name (e.g. "CONV_2D"), tensor indices and decoded options."""

    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict


@dataclasses.dataclass(frozen=True)
class Graph:
    """The first subgraph of a model file: tensors, operators in order, inputs and outputs."""

    path: str
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def op_counts(self) -> dict[str, int]:
        """How many operators of each builtin kind the graph has."""
        counts: dict[str, int] = {}
        for op in self.operators:
            counts[op.name] = counts.get(op.name, 0) + 1
        return counts

    def constants(self) -> dict[str, np.ndarray]:
        """Constant tensors by name, float16 weights already dequantized to float32.

        A DEQUANTIZE operator's output is a runtime tensor whose value is its float16 input
        cast to float32, so it is listed here under its own (output) name.
        """
        out = {t.name: t.data for t in self.tensors if t.data is not None}
        for op in self.operators:
            if op.name == "DEQUANTIZE":
                src = self.tensors[op.inputs[0]]
                if src.data is not None:
                    out[self.tensors[op.outputs[0]].name] = src.data.astype(np.float32)
        return out


def _import_tflite(path: str | os.PathLike):
    try:
        import tflite
    except ImportError:
        raise TFLiteError(f"{path}: reading .tflite files needs the 'tflite' package: pip install "
                          f"'abaw_jax[tflite]' (the shipped BlazeFace weights need no package)"
                          ) from None
    return tflite


def _builtin_names(tflite) -> dict[int, str]:
    return {v: k for k, v in vars(tflite.BuiltinOperator).items()
            if not k.startswith("_") and isinstance(v, int)}


def _options(tflite, name: str, op) -> dict:
    """The options this project reads (convolution, pooling, resize); {} for the others."""
    table = op.BuiltinOptions()
    if table is None:
        return {}
    kinds = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
             "MAX_POOL_2D": tflite.Pool2DOptions, "AVERAGE_POOL_2D": tflite.Pool2DOptions,
             "RESIZE_BILINEAR": tflite.ResizeBilinearOptions, "ADD": tflite.AddOptions}
    kind = kinds.get(name)
    if kind is None:
        return {}
    o = kind()
    o.Init(table.Bytes, table.Pos)
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        return {"padding": "SAME" if o.Padding() == 0 else "VALID", "stride": (o.StrideH(), o.StrideW()),
                "dilation": (o.DilationHFactor(), o.DilationWFactor()),
                "activation": o.FusedActivationFunction()}
    if name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return {"padding": "SAME" if o.Padding() == 0 else "VALID", "stride": (o.StrideH(), o.StrideW()),
                "filter": (o.FilterHeight(), o.FilterWidth()), "activation": o.FusedActivationFunction()}
    if name == "RESIZE_BILINEAR":
        return {"align_corners": bool(o.AlignCorners()), "half_pixel_centers": bool(o.HalfPixelCenters())}
    return {"activation": o.FusedActivationFunction()}


def read(path: str | os.PathLike) -> Graph:
    """Parses a ``.tflite`` file (first subgraph); raises TFLiteError naming the file."""
    path = pathlib.Path(path)
    tflite = _import_tflite(path)
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        raise TFLiteError(f"{path}: no such model file") from None
    except OSError as e:
        raise TFLiteError(f"{path}: cannot read the model file ({e.strerror})") from None
    # The identifier sits at bytes 4..8 of a flatbuffer; checking it first turns a wrong file
    # into a clear message instead of a parser crash deep inside the flatbuffer tables.
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise TFLiteError(f"{path}: not a TensorFlow Lite model (no TFL3 flatbuffer identifier)")
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        if model.SubgraphsLength() < 1:
            raise TFLiteError(f"{path}: the model has no subgraph")
        g = model.Subgraphs(0)
        names = _builtin_names(tflite)
        tensors = []
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            dtype = _DTYPES.get(t.Type())
            shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            data = None
            b = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
            if b is not None and dtype is not None:
                if b.DataLength() > 0:
                    raw = b.DataAsNumpy().tobytes()
                elif b.Offset() > 1:   # files over 2 GB keep buffers after the flatbuffer
                    raw = buf[b.Offset():b.Offset() + b.Size()]
                else:
                    raw = b""
                if raw:
                    data = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            tensors.append(Tensor(i, t.Name().decode(), shape, dtype, data))
        operators = []
        for i in range(g.OperatorsLength()):
            op = g.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            # Newer files put codes above 127 in BuiltinCode and keep 127 in the deprecated field.
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            operators.append(Operator(
                name, tuple(int(x) for x in op.InputsAsNumpy()) if op.InputsLength() else (),
                tuple(int(x) for x in op.OutputsAsNumpy()) if op.OutputsLength() else (),
                _options(tflite, name, op)))
        inputs = tuple(int(g.Inputs(i)) for i in range(g.InputsLength()))
        outputs = tuple(int(g.Outputs(i)) for i in range(g.OutputsLength()))
    except TFLiteError:
        raise
    except Exception as e:   # a truncated or corrupt flatbuffer fails anywhere in the tables
        raise TFLiteError(f"{path}: corrupt TensorFlow Lite flatbuffer ({type(e).__name__}: {e})") from None
    return Graph(str(path), tensors, operators, inputs, outputs)
