"""Every stitch in one ONNX file: the per-stitch graphs of ``snnet export`` under a tree of ``If`` nodes on a
``stitch_id`` input, their weights stored once.

Stitches share their weights (an anchor's blocks, a stitching layer, a head): identical tensors of several stitch
graphs become one initializer, placed in the smallest subtree that holds every stitch using it (ONNX Runtime hands a
subgraph the outer values it reads on every call, so a weight passes through no more ``If`` levels than it must).
An id the network does not have fails the run with a Gather error named ``unknown_stitch_id``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import SNNetError

PROTOBUF_LIMIT = 1_800_000_000  # below protobuf's 2 GiB: larger networks keep their weights in a .data file
ALIGN = 4096  # external weights on page boundaries, which ONNX Runtime maps into memory as they are


def _weight_name(tensor) -> str:
    """A name that only identical tensors share: the hash of type, shape and bytes (a tensor's raw bytes as they
    are; only one stored in typed fields is converted first)."""
    from onnx import numpy_helper

    data = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
    digest = hashlib.sha1(f"{tensor.data_type}{list(tensor.dims)}".encode() + data).hexdigest()
    return f"w{digest[:20]}"


def _read_stitch(path: Path, sid: int, weights: dict, users: dict[str, set[int]]):
    """One stitch file as (its nodes, output names, output value infos), its names made unique to the stitch and
    its initializers moved into ``weights`` by content."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise SNNetError(f"{path} has subgraphs of its own: its stitches cannot be put in one file")
    names = {graph.input[0].name: "images"}
    for init in graph.initializer:
        key = _weight_name(init)
        names[init.name] = key
        if key not in weights:
            weights[key] = onnx.TensorProto()
            weights[key].CopyFrom(init)
            weights[key].name = key
        users.setdefault(key, set()).add(sid)

    def rename(name: str) -> str:
        return names.get(name, f"s{sid}/{name}") if name else name

    nodes = []
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"s{sid}/{node.name}"
        copy.input[:] = [rename(n) for n in node.input]
        copy.output[:] = [rename(n) for n in node.output]
        del copy.metadata_props[:]  # the exporter's stack traces: most of a small graph's bytes
        copy.doc_string = ""
        nodes.append(copy)
    return model, nodes, [rename(o.name) for o in graph.output], list(graph.output)


class NetworkGraph:
    """Stitch files added one at a time (each may be deleted once added: only its unique weights are kept), then
    ``model()``: inputs ``images`` (as the files') and ``stitch_id`` (int64, a scalar or shape [1]), the outputs of
    the stitch it names."""

    def __init__(self) -> None:
        self.weights: dict = {}  # content name -> onnx.TensorProto
        self.users: dict[str, set[int]] = {}
        self.leaves: dict[int, tuple[list, list[str]]] = {}
        self.first = None  # (input value info, output value infos, ir version) of the first file
        self.opsets: dict[str, int] = {}

    def add(self, sid: int, path: Path) -> None:
        model, nodes, outs, infos = _read_stitch(Path(path), sid, self.weights, self.users)
        if self.first is None:
            self.first = (model.graph.input[0], infos, model.ir_version)
        if [o.type.tensor_type.elem_type for o in infos] != [o.type.tensor_type.elem_type for o in self.first[1]]:
            raise SNNetError(f"{path} has other outputs than the stitches before it")
        for op in model.opset_import:
            if self.opsets.setdefault(op.domain, op.version) != op.version:
                raise SNNetError(f"{path} uses opset {op.version} of {op.domain or 'ai.onnx'}, another file "
                                 f"{self.opsets[op.domain]}")
        self.leaves[sid] = (nodes, outs)

    def model(self):
        """The merged ``onnx.ModelProto``."""
        if not self.leaves:
            raise SNNetError("no stitch files to put in one network")
        return _network(self.leaves, self.weights, self.users, self.first, self.opsets)


def _network(leaves: dict, weights: dict, users: dict[str, set[int]], first, opsets: dict[str, int]):
    """The model of ``NetworkGraph.model``: the validity check, then the tree of ``If`` over the sorted ids."""
    from onnx import TensorProto, helper, numpy_helper

    ids = sorted(leaves)
    position = {sid: k for k, sid in enumerate(ids)}
    span = {key: (min(position[s] for s in used), max(position[s] for s in used)) for key, used in users.items()}
    out_infos = first[1]
    count = [0]

    def outputs(names: Sequence[str]) -> list:
        """Value infos of a (sub)graph's outputs ``names``: the stitches' output types, any shape."""
        return [helper.make_tensor_value_info(n, o.type.tensor_type.elem_type, None) for n, o in zip(names, out_infos)]

    def placed(lo: int, hi: int, mid: int | None) -> list:
        """The weights whose users all lie in ids[lo:hi] but not all in one half of it (split at ``mid``)."""
        return [weights[k] for k, (a, b) in span.items() if lo <= a and b < hi
                and (mid is None or (a < mid <= b))]

    def subtree(lo: int, hi: int, names: Sequence[str]) -> tuple[list, list]:
        """(nodes, initializers) that compute the outputs ``names`` of the stitch among ids[lo:hi]."""
        if hi - lo == 1:
            nodes, outs = leaves[ids[lo]]
            return nodes + [helper.make_node("Identity", [o], [n]) for o, n in zip(outs, names)], placed(lo, hi, None)
        mid = (lo + hi) // 2
        count[0] += 1
        k = count[0]
        branches = []
        for a, b in ((lo, mid), (mid, hi)):
            inner = [f"t{k}_{a}/{i}" for i in range(len(names))]
            nodes, inits = subtree(a, b, inner)
            branches.append(helper.make_graph(nodes, f"stitches_{ids[a]}_to_{ids[b - 1]}", [], outputs(inner),
                                              initializer=inits))
        pivot = numpy_helper.from_array(np.array(ids[mid], np.int64), f"pivot{k}")
        return [helper.make_node("Less", ["sid", pivot.name], [f"below{k}"]),
                helper.make_node("If", [f"below{k}"], list(names), then_branch=branches[0], else_branch=branches[1])
                ], [pivot, *placed(lo, hi, mid)]

    names = [o.name for o in out_infos]
    inner = [f"known/{n}" for n in names]
    nodes, inits = subtree(0, len(ids), inner)
    known = helper.make_graph(nodes, "known_stitch", [], outputs(inner), initializer=inits)
    # another id: a Gather past the end of the id list fails the run, its node named for the reason
    unknown_nodes = [helper.make_node("Abs", ["sid"], ["abs_sid"]),
                     helper.make_node("Add", ["abs_sid", "num_ids"], ["past_end"]),
                     helper.make_node("Gather", ["ids", "past_end"], ["never"], name="unknown_stitch_id")]
    never = [f"unknown/{i}" for i in range(len(out_infos))]
    unknown_nodes += [helper.make_node("Cast", ["never"], [n], to=o.type.tensor_type.elem_type)
                      for n, o in zip(never, out_infos)]
    unknown = helper.make_graph(unknown_nodes, "unknown_stitch", [], outputs(never))
    top = [
        helper.make_node("Reshape", ["stitch_id", "scalar_shape"], ["sid"]),
        helper.make_node("Equal", ["ids", "sid"], ["matches"]),
        helper.make_node("Cast", ["matches"], ["matches_int"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["matches_int"], ["num_matches"], keepdims=0),
        helper.make_node("Cast", ["num_matches"], ["is_known"], to=TensorProto.BOOL),
        helper.make_node("If", ["is_known"], names, then_branch=known, else_branch=unknown),
    ]
    constants = [numpy_helper.from_array(np.array(ids, np.int64), "ids"),
                 numpy_helper.from_array(np.array(len(ids), np.int64), "num_ids"),
                 numpy_helper.from_array(np.zeros(0, np.int64), "scalar_shape")]
    images = first[0]
    graph = helper.make_graph(top, "stitches", [
        helper.make_tensor_value_info("images", images.type.tensor_type.elem_type,
                                      [d.dim_param or d.dim_value or None for d in images.type.tensor_type.shape.dim]),
        helper.make_tensor_value_info("stitch_id", TensorProto.INT64, None)], list(out_infos),
        initializer=constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                             ir_version=first[2], producer_name="snnet")


def needs_external_data(model) -> bool:
    """Whether ``model``'s weights pass what one protobuf file holds."""
    return sum(len(t.raw_data) for t in _all_initializers(model.graph)) > PROTOBUF_LIMIT


def save_network(model, path: Path, data_path: Path | None = None, data_name: str = "") -> None:
    """Write ``model`` to ``path``; with ``data_path``, the bytes of its weights go there (page-aligned), which the
    model names ``data_name`` (the final file beside it)."""
    from onnx import TensorProto

    if data_path is not None:
        with open(data_path, "wb") as data:
            for t in _all_initializers(model.graph):
                if len(t.raw_data) < 1024:
                    continue
                offset = data.tell() + -data.tell() % ALIGN
                data.seek(offset)
                data.write(t.raw_data)
                length = len(t.raw_data)
                t.ClearField("raw_data")
                t.data_location = TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in {"location": data_name, "offset": str(offset), "length": str(length)}.items():
                    t.external_data.add(key=k, value=v)
    path.write_bytes(model.SerializeToString())


def _all_initializers(graph):
    """The initializers of ``graph`` and of every subgraph under it."""
    import onnx

    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_initializers(a.g)
