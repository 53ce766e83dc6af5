"""A small builder over `onnx.helper` that names intermediate values, so export.py reads like the maths."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, name: str, value) -> str:
        """An initializer; the same name always means the same array (shared between graphs)."""
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if name in self.initializers:
            return name
        self.initializers[name] = arr
        return name

    def ints(self, *values: int) -> str:
        return self.const("i64_" + "_".join(str(v).replace("-", "m") for v in values), np.array(values, np.int64))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs):
        outs = [name] if name and outputs == 1 else [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if outputs == 1 else outs

    def model(self, inputs, outputs, opset: int, doc: str) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(a, n) for n, a in self.initializers.items()]
        graph = helper.make_graph(self.nodes, "sentiment", inputs, outputs, initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="sentiment")
        model.doc_string = doc
        model.ir_version = 9
        return model


def tensor_info(name: str, dtype: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, dims)


def externalize(models: dict[str, onnx.ModelProto], weights_path) -> None:
    """Write every initializer once into one weights file that all graphs reference, so the scoring and the
    diagnostics graph share their embedding table on disk instead of each carrying a copy."""
    offsets: dict[str, tuple[int, int]] = {}
    with open(weights_path, "wb") as fh:
        for model in models.values():
            for t in model.graph.initializer:
                if t.name not in offsets and len(t.raw_data) >= 1024:  # shape constants stay inline
                    raw = t.raw_data
                    pad = (-fh.tell()) % 64  # aligned so the runtime can map tensors directly
                    fh.write(b"\0" * pad)
                    offsets[t.name] = (fh.tell(), len(raw))
                    fh.write(raw)
    location = weights_path.name
    for model in models.values():
        for t in model.graph.initializer:
            if t.name not in offsets:
                continue
            off, length = offsets[t.name]
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            del t.external_data[:]
            for key, value in (("location", location), ("offset", str(off)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
