"""One YAML stream → its documents, each checked against :class:`Limits` before it is built.

ruamel.yaml composes a document into a graph of nodes where an alias is the anchored node
itself, so an alias bomb is small until something walks it as a tree (``_plain``, pydantic,
``json.dumps``). Each composed document is therefore measured as a tree (values and depth, aliases
expanded) and refused above the limits; the other documents of the file still load. Nesting is
bounded while composing (``YAML.max_depth``), before Python's stack is at risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import MaxDepthExceededError
from ruamel.yaml.events import DocumentEndEvent
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from .limits import Limits


@dataclass(frozen=True)
class Refused:
    """A document that was not built: where (1-based) and why."""

    line: int
    col: int
    message: str


def load_documents(text: str, limits: Limits) -> list[Any]:
    """The documents of ``text`` as ruamel round-trip data (with positions), or a
    :class:`Refused` in place of each one beyond ``limits``. Empty documents are ``None``.

    A syntax error anywhere raises ``MarkedYAMLError``: the file as a whole is unreadable.
    """
    yaml = YAML(typ="rt")
    yaml.max_depth = limits.depth
    constructor, parser = yaml.get_constructor_parser(text)
    composer = yaml.composer
    documents: list[Any] = []
    try:
        while composer.check_node():
            try:
                node = composer.get_node()
            except MaxDepthExceededError as exc:
                mark = exc.problem_mark
                documents.append(_refused(mark, f"nested deeper than {limits.depth} levels"))
                _skip_to_document_end(parser)
                composer.depth = 0
                continue
            problem = _measure(node, limits)
            if problem is not None:
                documents.append(problem)
                continue
            documents.append(constructor.construct_document(node))
    finally:
        parser.dispose()
    return documents


def _skip_to_document_end(parser: Any) -> None:
    while not isinstance(parser.get_event(), DocumentEndEvent):
        pass


def _refused(mark: Any, message: str) -> Refused:
    return Refused(mark.line + 1, mark.column + 1, message) if mark else Refused(1, 1, message)


class _Beyond(Exception):
    def __init__(self, node: Node, message: str) -> None:
        self.node = node
        self.message = message


def _measure(root: Node, limits: Limits) -> Refused | None:
    """Refuse a document whose tree, aliases expanded, is too large or too deep, or that
    contains itself (``&a [*a]``). Each node is measured once, so the cost is the graph's."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) → (values, height)
    open_nodes: set[int] = set()

    def walk(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in open_nodes:
            raise _Beyond(node, "an alias refers to a value that contains it")
        found = measured.get(key)
        if found is None:
            if depth > limits.depth:
                raise _Beyond(node, f"nested deeper than {limits.depth} levels (through aliases)")
            open_nodes.add(key)
            values, height = 1, 1
            for child in _children(node):
                child_values, child_height = walk(child, depth + 1)
                values += child_values
                height = max(height, child_height + 1)
                if values > limits.values:
                    raise _Beyond(
                        root,
                        f"holds more than {limits.values} values once its aliases are expanded"
                        " (an alias bomb?)",
                    )
            open_nodes.discard(key)
            found = measured[key] = (values, height)
        if depth + found[1] - 1 > limits.depth:
            raise _Beyond(node, f"nested deeper than {limits.depth} levels (through aliases)")
        return found

    try:
        walk(root, 1)
    except _Beyond as exc:
        return _refused(exc.node.start_mark, exc.message)
    return None


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []
