"""A strict, safe YAML reader that keeps a source mark on every value.

PyYAML's ``safe_load`` follows YAML 1.1: ``1e-3`` is a string, ``no`` is false, ``010`` is 8,
and a duplicate key silently wins. We compose the node tree with YAML 1.2 core-schema
resolvers and build the values ourselves, which lets us reject duplicate keys and foreign
tags, bound the work an alias bomb or deep nesting can cause, and remember where each
value came from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from ssmgraph.errors import SOURCES, Collector, Mark

MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 64
MAX_INT_DIGITS = 19  # |value| < 2**63 is checked after parsing

_STD = "tag:yaml.org,2002:"


class _Core12Resolver(yaml.resolver.Resolver):
    """YAML 1.2 core schema: only true/false are booleans, 1e-3 is a float, 010 is ten."""


_Core12Resolver.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
):
    _Core12Resolver.add_implicit_resolver(_STD + _tag, re.compile(_regexp), list(_first))


class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Core12Resolver):
    def __init__(self, stream: str):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Core12Resolver.__init__(self)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Refuse every explicit tag, standard ones included (``!!int abc``, ``!!bool maybe``):
        the resolver alone decides a value's type."""
        event = self.peek_event()
        tag = getattr(event, "tag", None)  # aliases have none
        if tag is not None:
            raise _Refused(
                "E103",
                f"tag {tag!r} is not allowed: blueprints are plain data",
                event,
                "remove the tag; only plain YAML values (maps, lists, strings, numbers, booleans, null) are read",
            )
        return super().compose_node(parent, index)


class LDict(dict):
    """A mapping that remembers the marks of itself, its keys and its values."""

    def __init__(self, *args: Any, mark: Mark | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.mark = mark
        self.key_marks: dict[Any, Mark] = {}
        self.value_marks: dict[Any, Mark] = {}

    def mark_of(self, key: Any) -> Mark | None:
        return self.value_marks.get(key) or self.key_marks.get(key) or self.mark

    def key_mark(self, key: Any) -> Mark | None:
        return self.key_marks.get(key) or self.mark


class LList(list):
    """A sequence that remembers the marks of itself and its items."""

    def __init__(self, *args: Any, mark: Mark | None = None):
        super().__init__(*args)
        self.mark = mark
        self.item_marks: list[Mark | None] = [None] * len(self)

    def mark_of(self, index: int) -> Mark | None:
        if 0 <= index < len(self.item_marks) and self.item_marks[index] is not None:
            return self.item_marks[index]
        return self.mark


def mark_of(container: Any, key: Any, default: Mark | None = None) -> Mark | None:
    """The mark of ``container[key]`` when the container remembers one."""
    if isinstance(container, (LDict, LList)):
        return container.mark_of(key) or default
    return default


def plain(value: Any) -> Any:
    """Strip marks: LDict/LList become dict/list (for dumping and comparisons)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class _Builder:
    def __init__(self, name: str, errors: Collector):
        self.name = name
        self.errors = errors
        self.count = 0

    def mark(self, node: yaml.Node) -> Mark:
        return _mark(self.name, node)

    def build(self, node: yaml.Node, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _Refused("E103", f"the document expands to more than {MAX_VALUES} values (an alias bomb?)", node)
        if depth > MAX_DEPTH:
            raise _Refused("E103", f"values are nested deeper than {MAX_DEPTH} levels", node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if isinstance(node, yaml.SequenceNode):
            out = LList(mark=self.mark(node))
            for item in node.value:
                out.append(self.build(item, depth + 1))
                out.item_marks.append(self.mark(item))
            return out
        out_map = LDict(mark=self.mark(node))
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Refused("E103", "mapping keys must be plain scalars", key_node)
            key = self.build(key_node, depth + 1)
            if key in out_map:
                first = out_map.key_marks[key]
                self.errors.add(
                    "E102",
                    f"duplicate key {key!r} (first defined at line {first.line})",
                    self.mark(key_node),
                    help="YAML keeps only one of them; remove or rename the other",
                )
                continue
            out_map[key] = self.build(value_node, depth + 1)
            out_map.key_marks[key] = self.mark(key_node)
            out_map.value_marks[key] = self.mark(value_node)
        return out_map

    def scalar(self, node: yaml.ScalarNode) -> Any:
        text, tag = node.value, node.tag[len(_STD) :]
        if tag == "str":
            return text
        if tag == "null":
            return None
        if tag == "bool":
            return text.lower() == "true"
        if tag == "int":
            digits = text.lstrip("+-")
            if len(digits) > MAX_INT_DIGITS + 2:
                raise _Refused("E104", f"integer {text[:30]}... is too large", node)
            if digits.startswith("0x"):
                value = int(digits, 16)
            elif digits.startswith("0o"):
                value = int(digits, 0)
            else:
                value = int(digits, 10)
            value = -value if text.startswith("-") else value
            if abs(value) >= 2**63:
                raise _Refused("E104", f"integer {text} does not fit in 64 bits", node)
            return value
        # The float resolver matched: Python reads it once .inf/.nan lose their dot.
        return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))


class _Refused(Exception):
    """A refused value; ``node`` is the composed node or parser event (both have a start mark)."""

    def __init__(self, code: str, message: str, node: yaml.Node | yaml.Event, help: str = ""):
        self.code, self.message, self.node, self.help = code, message, node, help


def _mark(name: str, node: yaml.Node | yaml.Event) -> Mark:
    return Mark(name, node.start_mark.line + 1, node.start_mark.column + 1)


def read_text(path: Path, display: str | None = None) -> str:
    """Read a UTF-8 text file, refusing binary and oversized files with located errors."""
    name = display or str(path)
    errors = Collector()
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            errors.add("E100", f"file is {size} bytes; blueprints are limited to {MAX_FILE_BYTES}", Mark(name, 1, 1))
            errors.raise_if_any()
        data = path.read_bytes()
    except FileNotFoundError:
        errors.add(
            "E100", "no such file", Mark(name, 1, 1), help="check the path (relative paths start from the current directory)"
        )
    except IsADirectoryError:
        errors.add("E100", "is a directory, not a YAML file", Mark(name, 1, 1))
    except OSError as exc:
        errors.add("E100", f"cannot read: {exc.strerror}", Mark(name, 1, 1))
    errors.raise_if_any()
    if b"\x00" in data:
        errors.add("E100", "file is binary (it contains NUL bytes), not YAML", Mark(name, 1, 1))
    else:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            errors.add(
                "E100", f"file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", Mark(name, line, 1)
            )
    errors.raise_if_any()
    raise AssertionError("unreachable")


def load_yaml(text: str, name: str) -> Any:
    """Parse one YAML document from ``text`` (named ``name`` in errors) into marked values."""
    SOURCES[name] = text
    errors = Collector()
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        errors.add("E100", f"document is larger than {MAX_FILE_BYTES} bytes", Mark(name, 1, 1))
        errors.raise_if_any()
    try:
        node = _Loader(text).get_single_node()
    except _Refused as refused:
        errors.add(refused.code, refused.message, _mark(name, refused.node), help=refused.help)
        errors.raise_if_any()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Mark(name, mark.line + 1, mark.column + 1) if mark else Mark(name, 1, 1)
        message = " ".join(p for p in (exc.context, exc.problem) if p)
        errors.add("E101", message or "invalid YAML", where, help=_yaml_hint(text, where))
        errors.raise_if_any()
    except yaml.YAMLError as exc:
        errors.add("E101", str(exc).splitlines()[0], Mark(name, 1, 1))
        errors.raise_if_any()
    except RecursionError:
        errors.add("E103", f"values are nested too deeply (more than {MAX_DEPTH} levels are refused)", Mark(name, 1, 1))
        errors.raise_if_any()
    if node is None:
        return None
    builder = _Builder(name, errors)
    try:
        value = builder.build(node, 0)
    except _Refused as refused:
        errors.add(refused.code, refused.message, builder.mark(refused.node), help=refused.help)
        errors.raise_if_any()
    errors.raise_if_any()
    return value


def _yaml_hint(text: str, mark: Mark) -> str:
    rows = text.splitlines()
    row = rows[mark.line - 1] if 0 < mark.line <= len(rows) else ""
    if "${" in row or "$(" in row:
        return "quote expressions inside {...} flow maps, e.g. dim: '$d * 4'"
    if "\t" in row:
        return "YAML does not allow tabs for indentation; use spaces"
    return ""


def load_file(path: Path, display: str | None = None) -> Any:
    name = display or str(path)
    return load_yaml(read_text(path, name), name)


class _Dumper(yaml.emitter.Emitter, yaml.serializer.Serializer, yaml.representer.SafeRepresenter, _Core12Resolver):
    """Quotes strings exactly when our YAML 1.2 reader would read them as something else."""

    def __init__(self, stream: Any, **kwargs: Any):
        yaml.emitter.Emitter.__init__(self, stream, allow_unicode=True, width=100)
        yaml.serializer.Serializer.__init__(self)
        yaml.representer.SafeRepresenter.__init__(self, default_flow_style=False, sort_keys=False)
        _Core12Resolver.__init__(self)


def _represent_str(dumper: _Dumper, value: str) -> yaml.ScalarNode:
    # Line breaks YAML 1.1 readers fold (NEL, LS, PS) survive only escaped in double quotes.
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """Write plain data as YAML that :func:`load_yaml` reads back to equal values."""
    return yaml.dump(plain(data), Dumper=_Dumper, sort_keys=False)
