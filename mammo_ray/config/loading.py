"""Reading a config file: strict YAML (no duplicate keys, bounded alias expansion, UTF-8), then validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mammo_ray import storage
from mammo_ray.config.study_config import StudyConfig, parse_config
from mammo_ray.errors import ConfigError, StorageError

#: Most nodes a config may expand to through YAML aliases: a few lines of nested aliases ("billion laughs")
#: expand to billions, which validating, hashing or dumping the config would each walk.
MAX_YAML_NODES = 10_000


_MERGE_TAG = "tag:yaml.org,2002:merge"


_VALUE_TAG = "tag:yaml.org,2002:value"


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader (same tags and constructors); `_load_yaml` checks its composed node graph
    before anything is constructed."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _check_expansion(root: yaml.Node, uri: str) -> None:
    """Refuse a document whose aliases expand it beyond MAX_YAML_NODES nodes, or that contains itself.

    An alias is the very node it names, so the composed graph stays small while its expansion grows
    exponentially; the expanded size of each node is memoised on identity, which keeps this linear.
    """
    expanded: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes being counted: the ancestors of the current one
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted_children = stack.pop()
        if counted_children:
            expanded[id(node)] = 1 + sum(expanded[id(child)] for child in _children(node))
            open_nodes.discard(id(node))
            continue
        if id(node) in expanded:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in reversed(_children(node)):
            if id(child) in open_nodes:
                raise ConfigError("<file>", f"{uri}: the node at line {child.start_mark.line + 1} contains an "
                                            "alias of itself (a recursive document is not a config)")
            if id(child) not in expanded:
                stack.append((child, False))
    total = expanded[id(root)]
    if total > MAX_YAML_NODES and total > len(expanded):  # the excess comes from aliases
        raise ConfigError("<file>", f"{uri}: YAML aliases expand the document to {total} nodes (at most "
                                    f"{MAX_YAML_NODES}); refused before building it")


def _check_duplicate_keys(loader: _ConfigLoader, root: yaml.Node, uri: str) -> None:
    """Refuse a mapping that repeats a key, at any depth: YAML keeps the last one and drops the first silently.

    Keys compare as the document means them (`1` and `01` are one int). Keys merged in with `<<: *anchor`
    are not the mapping's own, so overriding one explicitly is allowed.
    """
    visited: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.MappingNode):
            first_lines: dict[object, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    children.append((value_node, path))
                    continue
                label = key_node.value if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
                key_path = f"{path}.{label}" if path else str(label)
                if isinstance(key_node, yaml.ScalarNode):
                    # `=` (the value key) is a plain string key once PyYAML flattens the mapping
                    key = key_node.value if key_node.tag == _VALUE_TAG else loader.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    if key in first_lines:
                        raise ConfigError(key_path, f"duplicate key {label!r} at line {line} of {uri} (first at "
                                                    f"line {first_lines[key]}): YAML would keep only the last")
                    first_lines[key] = line
                children.append((value_node, key_path))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}.{index}" if path else str(index)) for index, item in enumerate(node.value)]
        stack.extend(reversed(children))  # document order: the first duplicate is the one reported


def _load_yaml(text: str, uri: str) -> Any:
    """yaml.safe_load with the checks above run on the composed nodes, before the document is constructed."""
    loader = _ConfigLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_expansion(root, uri)
        _check_duplicate_keys(loader, root, uri)
        return loader.construct_document(root)
    except RecursionError:
        raise ConfigError("<file>", f"{uri}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_config(uri: str | Path) -> StudyConfig:
    """Load a study config from a YAML file (local path or s3://)."""
    uri = str(uri)
    try:
        data = storage.read_bytes(uri)
    except StorageError as error:
        raise ConfigError("<file>", str(error)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError("<file>", f"{uri} is not UTF-8 text (byte {error.start}: {error.reason}); save it "
                                    "as UTF-8") from None
    try:
        raw = _load_yaml(text, uri)
    except yaml.YAMLError as error:
        raise ConfigError("<file>", f"{uri} is not valid YAML: {error}") from None
    return parse_config(raw, source=uri)

