"""The acting function as ONNX, so a robot runs the released policy without JAX.

:func:`export_acting` traces ``agent.act_from_noise`` with the release's parameters (jaxpr) and writes
each equation as ONNX nodes: the parameters become initialisers, everything that depends on them
alone is computed here once (constant folding), the flow's ``scan`` over its steps is unrolled, and
nested calls are inlined. The graph's inputs are the padded observation, the instruction's tokens and
the standard normal noise the policy integrates from, so a robot's actions are exactly reproducible
from its inputs (tests/test_portable.py compares them with the JAX policy's).

The ONNX graph covers the primitives the agents' acting functions use; anything else is refused at
export with its name, never silently mistranslated. Batch size is fixed at export (a robot acts for
itself: 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from jax.extend import core as jax_core
from onnx import TensorProto, helper, numpy_helper

from lwd_core.algo.learner import Learner
from lwd_core.algo.text import MAX_TOKENS

OPSET = 18
OUTPUT = "actions"


@dataclass(frozen=True)
class _Tensor:
    """A value of the ONNX graph (one that depends on the inputs); constants stay numpy arrays."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


Value = _Tensor | np.ndarray


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._constants: dict[int, tuple[np.ndarray, str]] = {}  # id -> (array kept alive, its name)

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def ref(self, value: Value) -> str:
        if isinstance(value, _Tensor):
            return value.name
        if id(value) in self._constants:  # a weight the unrolled flow steps all use is stored once
            return self._constants[id(value)][1]
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        self._constants[id(value)] = (value, name)
        return name

    def op(self, op_type: str, inputs: Sequence[Value], shape: Sequence[int], dtype: Any, **attrs: Any) -> _Tensor:
        out = _Tensor(self._name(op_type.lower()), tuple(int(d) for d in shape), np.dtype(dtype))
        self.nodes.append(helper.make_node(op_type, [self.ref(v) for v in inputs], [out.name], **attrs))
        return out


_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min", "pow": "Pow",
           "lt": "Less", "gt": "Greater", "le": "LessOrEqual", "ge": "GreaterOrEqual", "eq": "Equal"}
_LOGICAL = {"and": "And", "or": "Or", "not": "Not"}  # booleans only: on integers JAX's are bitwise
_UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid", "sin": "Sin",
          "cos": "Cos", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "erf": "Erf", "copy": "Identity"}
_REDUCE = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}
_INLINE = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat", "checkpoint")


def _as_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    array = np.asarray(value)
    return array.astype(dtype) if dtype is not None and array.dtype != dtype else array


def _inner_jaxpr(params: dict[str, Any]) -> jax_core.ClosedJaxpr:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in params:
            inner = params[key]
            return inner if isinstance(inner, jax_core.ClosedJaxpr) else jax_core.ClosedJaxpr(inner, ())
    raise ValueError(f"no inner jaxpr in {sorted(params)}")


def _einsum_equation(lhs_rank: int, rhs_rank: int, dimension_numbers: Any) -> str:
    """dot_general as an einsum: batch dims, then the left's free dims, then the right's."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs, rhs = [""] * lhs_rank, [""] * rhs_rank
    for left, right in zip(lhs_batch, rhs_batch, strict=True):
        lhs[left] = rhs[right] = next(letters)
    for left, right in zip(lhs_contract, rhs_contract, strict=True):
        lhs[left] = rhs[right] = next(letters)
    for side in (lhs, rhs):
        for index, letter in enumerate(side):
            side[index] = letter or next(letters)
    out = [lhs[d] for d in lhs_batch]
    out += [lhs[d] for d in range(lhs_rank) if d not in lhs_batch and d not in lhs_contract]
    out += [rhs[d] for d in range(rhs_rank) if d not in rhs_batch and d not in rhs_contract]
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def _convert(graph: _Graph, eqn: Any, ins: list[Value]) -> list[Value]:
    """One equation with at least one graph input as ONNX nodes."""
    name, params = eqn.primitive.name, eqn.params
    out_aval = eqn.outvars[0].aval
    shape, dtype = out_aval.shape, np.dtype(out_aval.dtype)
    # Constants take the dtype JAX gave them in this equation (weakly typed literals included).
    ins = [value if isinstance(value, _Tensor) else _as_numpy(value, var.aval.dtype)
           for value, var in zip(ins, eqn.invars, strict=True)]

    def reshape(value: Value, new_shape: Sequence[int]) -> _Tensor:
        return graph.op("Reshape", [value, np.asarray(new_shape, np.int64)], new_shape, value.dtype)

    if name in _BINARY:
        return [graph.op(_BINARY[name], ins, shape, dtype)]
    if name == "ne":
        return [graph.op("Not", [graph.op("Equal", ins, shape, dtype)], shape, dtype)]
    if name in _UNARY:
        return [graph.op(_UNARY[name], ins, shape, dtype)]
    if name in _LOGICAL and dtype == np.bool_:
        return [graph.op(_LOGICAL[name], ins, shape, dtype)]
    if name == "rsqrt":
        return [graph.op("Reciprocal", [graph.op("Sqrt", ins, shape, dtype)], shape, dtype)]
    if name == "square":
        return [graph.op("Mul", [ins[0], ins[0]], shape, dtype)]
    if name == "integer_pow":
        exponent = abs(params["y"])
        if exponent == 0:
            return [np.ones(shape, dtype)]
        # Squaring and multiplying, as JAX lowers it, so the rounding is the same.
        base, result = ins[0], None
        while exponent:
            if exponent & 1:
                result = base if result is None else graph.op("Mul", [result, base], shape, dtype)
            exponent >>= 1
            if exponent:
                base = graph.op("Mul", [base, base], shape, dtype)
        return [graph.op("Reciprocal", [result], shape, dtype) if params["y"] < 0 else result]
    if name == "convert_element_type":
        return [graph.op("Cast", ins, shape, dtype, to=helper.np_dtype_to_tensor_dtype(dtype))]
    if name == "broadcast_in_dim":
        kept = list(params["broadcast_dimensions"])
        expanded = [ins[0].shape[kept.index(d)] if d in kept else 1 for d in range(len(shape))]
        return [graph.op("Expand", [reshape(ins[0], expanded), np.asarray(shape, np.int64)], shape, dtype)]
    if name in ("reshape", "squeeze"):
        return [reshape(ins[0], shape)]
    if name == "transpose":
        return [graph.op("Transpose", ins, shape, dtype, perm=list(params["permutation"]))]
    if name == "concatenate":
        return [graph.op("Concat", ins, shape, dtype, axis=int(params["dimension"]))]
    if name == "stack":
        axis = int(params["axis"])
        rows = [graph.op("Unsqueeze", [value, np.asarray([axis], np.int64)],
                         (*shape[:axis], 1, *shape[axis + 1:]), dtype) for value in ins]
        return [graph.op("Concat", rows, shape, dtype, axis=axis)]
    if name in _REDUCE:
        axes = np.asarray(params["axes"], np.int64)
        return [graph.op(_REDUCE[name], [ins[0], axes], shape, dtype, keepdims=0)]
    if name == "argmax":
        (axis,) = params["axes"]
        index = graph.op("ArgMax", ins, shape, np.int64, axis=int(axis), keepdims=0)
        return [graph.op("Cast", [index], shape, dtype, to=helper.np_dtype_to_tensor_dtype(dtype))]
    if name == "select_n" and len(ins) == 3 and np.dtype(eqn.invars[0].aval.dtype) == np.bool_:
        return [graph.op("Where", [ins[0], ins[2], ins[1]], shape, dtype)]  # select_n(p, a, b) = b where p
    if name == "clamp":
        low, value, high = ins
        return [graph.op("Max", [graph.op("Min", [value, high], shape, dtype), low], shape, dtype)]
    if name == "dot_general":
        equation = _einsum_equation(len(eqn.invars[0].aval.shape), len(eqn.invars[1].aval.shape),
                                    params["dimension_numbers"])
        return [graph.op("Einsum", ins, shape, dtype, equation=equation)]
    if name == "gather":
        numbers, sizes = params["dimension_numbers"], params["slice_sizes"]
        operand = eqn.invars[0].aval.shape
        leading = tuple(range(len(numbers.start_index_map)))
        index_rank = len(eqn.invars[1].aval.shape)
        # x[i, j, ...] over leading axes, whole slices of the rest, after the index dims: ONNX GatherND
        # (which needs indices in bounds: token ids and argmax picks always are).
        if (tuple(numbers.start_index_map) == tuple(numbers.collapsed_slice_dims) == leading
                and tuple(numbers.offset_dims) == tuple(range(index_rank - 1, len(shape)))
                and not numbers.operand_batching_dims
                and tuple(sizes) == (1,) * len(leading) + tuple(operand[len(leading):])):
            indices = graph.op("Cast", [ins[1]], eqn.invars[1].aval.shape, np.int64, to=TensorProto.INT64)
            return [graph.op("GatherND", [ins[0], indices], shape, dtype)]
    raise NotImplementedError(f"no ONNX translation for the JAX primitive {name!r} ({params})")


def _evaluate(graph: _Graph, closed: jax_core.ClosedJaxpr, args: Sequence[Value]) -> list[Value]:
    jaxpr = closed.jaxpr
    env: dict[Any, Value] = {}

    def read(var: Any) -> Value:
        return _as_numpy(var.val) if isinstance(var, jax_core.Literal) else env[var]

    for var, const in zip(jaxpr.constvars, closed.consts, strict=True):
        env[var] = _as_numpy(const)
    for var, arg in zip(jaxpr.invars, args, strict=True):
        env[var] = arg
    for eqn in jaxpr.eqns:
        ins = [read(var) for var in eqn.invars]
        name = eqn.primitive.name
        if not any(isinstance(value, _Tensor) for value in ins):  # folded here, as jax.core.eval_jaxpr runs it
            outs = eqn.primitive.bind(*[jnp.asarray(value) for value in ins],
                                      **eqn.primitive.get_bind_params(eqn.params))
            outs = [_as_numpy(out) for out in (outs if eqn.primitive.multiple_results else [outs])]
        elif name in _INLINE:
            outs = _evaluate(graph, _inner_jaxpr(eqn.params), ins)
        elif name == "scan":
            outs = _unrolled_scan(graph, eqn, ins)
        else:
            outs = _convert(graph, eqn, ins)
        for var, out in zip(eqn.outvars, outs, strict=True):
            env[var] = out
    return [read(var) for var in jaxpr.outvars]


def _unrolled_scan(graph: _Graph, eqn: Any, ins: list[Value]) -> list[Value]:
    params = eqn.params
    body, length = params["jaxpr"], params["length"]
    consts, carry = ins[: params["num_consts"]], ins[params["num_consts"]: params["num_consts"] + params["num_carry"]]
    xs = ins[params["num_consts"] + params["num_carry"]:]
    steps: list[list[Value]] = []
    for index in (reversed(range(length)) if params["reverse"] else range(length)):
        sliced = [x[index] if not isinstance(x, _Tensor) else
                  graph.op("Gather", [x, np.asarray(index, np.int64)], x.shape[1:], x.dtype, axis=0) for x in xs]
        outs = _evaluate(graph, body, [*consts, *carry, *sliced])
        carry, ys = outs[: len(carry)], outs[len(carry):]
        steps.append(ys)
    if params["reverse"]:
        steps.reverse()
    stacked = []
    for column in zip(*steps, strict=True) if steps else ():
        if not any(isinstance(y, _Tensor) for y in column):
            stacked.append(np.stack(column))
            continue
        first = next(y for y in column if isinstance(y, _Tensor))
        rows = [graph.op("Unsqueeze", [y, np.asarray([0], np.int64)], (1, *first.shape), first.dtype) for y in column]
        stacked.append(graph.op("Concat", rows, (len(rows), *first.shape), first.dtype, axis=0))
    return [*carry, *stacked]


def trace_to_onnx(fn: Callable[..., jax.Array], examples: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """``fn(*examples.values())`` (one array out) as a serialised ONNX model with those named inputs."""
    closed = jax.make_jaxpr(fn)(*examples.values())
    graph = _Graph()
    inputs = [_Tensor(name, example.shape, example.dtype) for name, example in examples.items()]
    (result,) = _evaluate(graph, closed, inputs)
    if not isinstance(result, _Tensor):
        raise ValueError("the function does not depend on its inputs")
    graph.nodes.append(helper.make_node("Identity", [result.name], [OUTPUT]))
    model = helper.make_model(
        helper.make_graph(graph.nodes, "lwd_acting",
                          [helper.make_tensor_value_info(t.name, helper.np_dtype_to_tensor_dtype(t.dtype), t.shape)
                           for t in inputs],
                          [helper.make_tensor_value_info(OUTPUT, helper.np_dtype_to_tensor_dtype(result.dtype),
                                                         result.shape)],
                          graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lwd-flywheel")
    model.ir_version = 9  # what onnxruntime releases of the last two years all read
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_acting(learner: Learner, acting_params: Any, rows: int = 1) -> bytes:
    """The agent's acting function with ``acting_params`` baked in, for ``rows`` observations at a time:
    inputs ``obs`` (rows, obs_dim) float32, ``tokens`` (rows, MAX_TOKENS) int32 and ``noise`` (the agent's
    :meth:`acting_noise_shape`) float32; output ``actions`` (rows, chunk, action_dim) in [-1, 1]."""
    spec, agent = learner.spec, learner.agent
    examples = {"obs": np.zeros((rows, spec.obs_dim), np.float32),
                "tokens": np.zeros((rows, MAX_TOKENS), np.int32),
                "noise": np.zeros(agent.acting_noise_shape(rows), np.float32)}

    def act(obs: jax.Array, tokens: jax.Array, noise: jax.Array) -> jax.Array:
        return agent.act_from_noise(acting_params, obs, tokens, noise).reshape(rows, spec.chunk, spec.action_dim)

    shapes = {name: list(example.shape) for name, example in examples.items()}
    return trace_to_onnx(act, examples, {"lwd.inputs": json.dumps(shapes), "lwd.method": spec.method})
