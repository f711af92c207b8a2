"""A flow as a graph: :func:`to_mermaid` draws a :class:`~millrace.dataflow.Dataflow`'s steps in
Mermaid (https://mermaid.js.org), which GitHub and most Markdown viewers render.

Every step is a node labelled with its kind and its step id (inputs and stateful steps have
one) or its function (stateless steps) or output (captures). Inputs are parallelograms,
captures trapezoids, stateful steps cylinders (they keep state per key). An edge drawn thick,
``by key``, is where the items are exchanged between workers: each key's items go to the
worker that owns the key, before every stateful step. An input joins the pipeline at the
step after it: its items go through every later step, as the runtime runs them.

From the command line, ``python -m millrace.visualize FILE_OR_MODULE[:ATTR]`` (or
``millrace visualize``) prints the graph of the flow a file or module holds (attribute ``flow``
unless another is named).

>>> from millrace.dataflow import Dataflow
>>> from millrace.inputs import TestingInputConfig
>>> from millrace.outputs import StdOutputConfig
>>> flow = Dataflow()
>>> flow.input("lines", TestingInputConfig(["a b", "b"]))
>>> flow.flat_map(str.split)
>>> flow.map(lambda word: (word, 1))
>>> flow.reduce("count", lambda a, b: a + b, lambda total: total > 9)
>>> flow.capture(StdOutputConfig())
>>> print(to_mermaid(flow))
flowchart TD
    step0[/"input 'lines'<br>TestingInputConfig"/]
    step1["flat_map<br>str.split"]
    step2["map<br>#lt;lambda#gt;"]
    step3[("reduce 'count'")]
    step4[\\"capture<br>StdOutputConfig"/]
    step0 --> step1
    step1 --> step2
    step2 ==>|by key| step3
    step3 --> step4
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import plan
from .dataflow import Dataflow

__all__ = ["to_mermaid", "main"]

# Mermaid reads `#name;` and `#123;` in a label as an entity: text from the user (step ids,
# function names) has its own `#` written as one too, before quotes and brackets are.
_ESCAPES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "\n": " ", "\r": " "}


def _text(value: str) -> str:
    return "".join(_ESCAPES.get(char, char) for char in value)


def _label(step: plan.Step) -> str:
    if isinstance(step, plan.Input):
        return f"input '{_text(step.step_id)}'<br>{_text(type(step.config).__name__)}"
    if isinstance(step, plan.Capture):
        return f"capture<br>{_text(type(step.config).__name__)}"
    if isinstance(step, plan.WindowStep):
        window, clock = type(step.window).__name__, type(step.clock).__name__
        return f"{step.kind} '{_text(step.step_id)}'<br>{_text(window)}, {_text(clock)}"
    if isinstance(step, plan.StatefulStep):
        return f"{step.kind} '{_text(step.step_id)}'"
    if isinstance(step, plan._FunctionStep):
        fn_name = getattr(step.fn, "__qualname__", None) or type(step.fn).__name__
        return f"{step.kind}<br>{_text(fn_name)}"
    return _text(step.name)


def _node(node_id: str, step: plan.Step) -> str:
    label = _label(step)
    if isinstance(step, plan.Input):
        return f'{node_id}[/"{label}"/]'
    if isinstance(step, plan.Capture):
        return f'{node_id}[\\"{label}"/]'
    if isinstance(step, plan.StatefulStep):
        return f'{node_id}[("{label}")]'
    return f'{node_id}["{label}"]'


def to_mermaid(flow: Dataflow) -> str:
    """The Mermaid ``flowchart`` of ``flow`` (see the module's docstring), without a trailing
    newline. Reads the flow's steps only; runs none of its code."""
    if not isinstance(flow, Dataflow):
        raise TypeError(f"expected a Dataflow, got {flow!r}")
    nodes: list[str] = []
    edges: list[str] = []
    # The steps whose output goes into the next step that is not an input: the one before it,
    # and every input added since (the runtime runs an input's items through every later step).
    feeding: list[str] = []
    for index, step in enumerate(flow.steps):
        node_id = f"step{index}"
        nodes.append(_node(node_id, step))
        if isinstance(step, plan.Input):
            feeding.append(node_id)
            continue
        arrow = "==>|by key|" if isinstance(step, plan.StatefulStep) else "-->"
        edges.extend(f"{source} {arrow} {node_id}" for source in feeding)
        feeding = [node_id]
    return "\n".join(["flowchart TD", *(f"    {line}" for line in nodes + edges)])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m millrace.visualize FILE_OR_MODULE[:ATTR]``: print the flow's graph."""
    import argparse

    from .locate import FlowNotFound, load

    parser = argparse.ArgumentParser(
        prog="python -m millrace.visualize",
        description="Print the Mermaid graph of a flow.",
    )
    parser.add_argument("target", metavar="FILE_OR_MODULE[:ATTR]", help="the flow (attribute `flow` by default)")
    args = parser.parse_args(argv)
    try:
        flow = load(args.target)
    except FlowNotFound as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(to_mermaid(flow))
    return 0


if __name__ == "__main__":
    sys.exit(main())
