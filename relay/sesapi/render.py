"""PURE: SES email templates (Handlebars, as SES renders them): parse, render, bound.

SES renders stored templates with Handlebars: `{{var}}`, dotted paths (`{{contact.firstName}}`),
`{{#if}}` / `{{else}}` / `{{else if x}}`, `{{#unless}}`, `{{#each}}` (with `{{this}}`,
`{{@index}}`, `{{@key}}`, `{{@first}}`, `{{@last}}`, `{{../x}}`), `{{#with}}`, inline partials
(`{{#*inline "name"}}...{{/inline}}` and `{{> name}}`), comments, `{{{raw}}}`, `{{& raw}}`, and
whitespace control (`{{~ ... ~}}`, and Handlebars' "standalone" lines: a line holding only a
block tag, comment or partial leaves no blank line behind).

What SES does, and so relay:
- A value the template outputs that is absent from the data, or null, fails the message with
  SES's text: "Attribute 'NAME' is not present in the rendering data." (a `RenderingFailure`:
  the Rendering Failure event at send time, a BadRequestException from TestRenderEmailTemplate).
  A condition (`#if`, `#unless`, `#each`, `#with`) on an absent value is simply false.
- SES does NOT escape HTML: "SES doesn't escape HTML content when rendering the HTML template
  for a message" (the SES developer guide, send-personalized-email-advanced). `{{x}}` and
  `{{{x}}}` therefore output the same text in every part; `render(..., html_escape=True)`
  gives Handlebars' own escaping of `{{x}}` in the HTML part for whoever wants it.
- Inline template content (SendEmail / SendBulkEmail TemplateContent) supports only simple
  substitutions; anything else is refused with SES's "Template contains unsupported
  operations." (`compile_template(..., inline=True)`).
- TemplateData is a JSON object of at most 262,144 characters; a stored template is at most
  500 KB (subject, text and HTML together).
- SendBulkEmail merges an entry's ReplacementTemplateData into the default TemplateData key by
  key, nested objects recursively, arrays replaced whole (`merge_data`).

Why an own parser, not pybars3: pybars3 (last release 2019) compiles each template into Python
source and runs it, has no bound on output, time or nesting, and escapes by default. Templates
and data come from API callers, so here everything is bounded: the template size, the block
nesting (MAX_DEPTH, at parse and at render, partials included, so no recursion blow-up), the
output (MAX_OUTPUT_CHARS) and the work (MAX_STEPS node visits and loop turns, so nested
`#each` over large lists stops); parsing is one left-to-right pass (str.find), rendering is
proportional to the steps taken (at most about a second of CPU). No I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

MAX_TEMPLATE_BYTES = 500 * 1024  # a stored template: subject, text and HTML together (SES)
MAX_INLINE_BYTES = 1024 * 1024  # inline TemplateContent (SES: 1 MB input)
MAX_DATA_CHARS = 262_144  # TemplateData (SES's EmailTemplateData max length)
MAX_DATA_DEPTH = 64  # JSON nesting in TemplateData
MAX_DEPTH = 64  # block nesting, at parse and (with partials) at render
MAX_OUTPUT_CHARS = 10 * 1024 * 1024  # one render: subject, text and HTML together
MAX_STEPS = 1_000_000  # node visits in one render

UNSUPPORTED_INLINE = "Template contains unsupported operations."


class TemplateError(ValueError):
    """A template that cannot be parsed (or holds what is not allowed where it is used):
    BadRequestException at CreateEmailTemplate/UpdateEmailTemplate or an inline send. The
    message names the field (`TemplateContent.Html`, ...)."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}" if field_name else reason)
        self.field = field_name
        self.reason = reason


class TemplateDataError(ValueError):
    """TemplateData that is not a JSON object within the limits (BadRequestException;
    SES v1: InvalidRenderingParameter)."""


class RenderingFailure(Exception):
    """The template cannot render with this data. `message` is SES's errorMessage of the
    Rendering Failure event; `template_name` its templateName."""

    def __init__(self, message: str, template_name: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.template_name = template_name


def missing_attribute(path: str) -> str:
    """SES's message for an attribute the data does not have."""
    return f"Attribute '{path}' is not present in the rendering data."


# ---------------------------------------------------------------------- the tree

class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class Path:
    depth: int  # how many `../`
    data: bool  # an @variable
    parts: tuple[str, ...]
    source: str  # as written, for messages


@dataclass(frozen=True, slots=True)
class Value:
    """A literal parameter: "text", 3, true, null."""

    value: Any


Param = Path | Value


@dataclass(slots=True)
class Var:
    param: Param
    raw: bool  # {{{x}}} or {{& x}}: never escaped


BlockKind = Literal["if", "unless", "each", "with"]


@dataclass(slots=True)
class Block:
    kind: BlockKind
    param: Param
    body: list[Node] = field(default_factory=list)
    inverse: list[Node] = field(default_factory=list)


@dataclass(slots=True)
class PartialCall:
    name: str
    param: Param | None


Node = str | Var | Block | PartialCall


@dataclass(frozen=True, slots=True)
class Part:
    """One compiled part: its nodes and the inline partials it defines."""

    field: str
    nodes: list[Node]
    partials: dict[str, list[Node]]
    source: str


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    subject: Part | None
    text: Part | None
    html: Part | None


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str | None
    html: str | None


# ---------------------------------------------------------------------- tokens

@dataclass(slots=True)
class _Tag:
    kind: str  # var raw open close else partial comment inline
    content: str
    at: int  # offset of "{{" in the source
    strip_left: bool
    strip_right: bool
    standalone_kind: bool  # a tag that can stand alone on its line


_Token = str | _Tag

_TRAILING_BLANK = re.compile(r"\n[ \t]*\Z")
_LEADING_BLANK = re.compile(r"[ \t]*\r?\n")


def _line_of(source: str, at: int) -> int:
    return source.count("\n", 0, at) + 1


def _tokens(source: str, fname: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(source)
    while i < n:
        j = source.find("{{", i)
        if j < 0:
            out.append(source[i:])
            break
        if j > 0 and source[j - 1] == "\\":  # \{{ : a literal "{{"
            out.append(source[i:j - 1] + "{{")
            i = j + 2
            continue
        if j > i:
            out.append(source[i:j])
        k = j + 2
        strip_left = source.startswith("~", k)
        if strip_left:
            k += 1
        if source.startswith("!--", k):
            end = source.find("--", k + 3)
            while end >= 0 and not re.match(r"--~?\}\}", source[end:end + 5]):
                end = source.find("--", end + 1)
            if end < 0:
                raise TemplateError(fname, f"unclosed comment at line {_line_of(source, j)}")
            strip_right = source.startswith("~", end + 2)
            close = end + (5 if strip_right else 4)
            out.append(_Tag("comment", "", j, strip_left, strip_right, True))
            i = close
            continue
        if source.startswith("{", k):  # {{{raw}}}
            end = source.find("}}}", k + 1)
            # (searched no further than the plain end: many raw tags stay linear)
            tilde = source.find("}~}}", k + 1, end + 4 if end >= 0 else n)
            if tilde >= 0 and (end < 0 or tilde < end):
                content, strip_right, close = source[k + 1:tilde], True, tilde + 4
            elif end >= 0:
                content, strip_right, close = source[k + 1:end], False, end + 3
            else:
                raise TemplateError(fname, f"unclosed '{{{{{{' at line {_line_of(source, j)}")
            out.append(_Tag("raw", content.strip(), j, strip_left, strip_right, False))
            i = close
            continue
        end = source.find("}}", k)
        if end < 0:
            raise TemplateError(fname, f"unclosed '{{{{' at line {_line_of(source, j)}")
        strip_right = end > k and source[end - 1] == "~"
        content = source[k:end - 1 if strip_right else end].strip()
        i = end + 2
        out.append(_classify(content, j, strip_left, strip_right, source, fname))
    _apply_whitespace_control(out)
    return out


def _classify(content: str, at: int, strip_left: bool, strip_right: bool, source: str,
              fname: str) -> _Tag:
    if not content:
        raise TemplateError(fname, f"empty '{{{{}}}}' at line {_line_of(source, at)}")
    c = content[0]
    if c == "!":
        return _Tag("comment", "", at, strip_left, strip_right, True)
    if c == "#":
        body = content[1:].strip()
        if body.startswith("*"):
            return _Tag("inline", body[1:].strip(), at, strip_left, strip_right, True)
        return _Tag("open", body, at, strip_left, strip_right, True)
    if c == "/":
        return _Tag("close", content[1:].strip(), at, strip_left, strip_right, True)
    if c == "^":
        if content[1:].strip():
            raise TemplateError(fname, f"inverse sections ('{{{{^{content[1:].strip()}}}}}') "
                                f"are not supported (line {_line_of(source, at)})")
        return _Tag("else", "", at, strip_left, strip_right, True)
    if content == "else" or content.startswith(("else ", "else\t")):
        return _Tag("else", content[4:].strip(), at, strip_left, strip_right, True)
    if c == ">":
        return _Tag("partial", content[1:].strip(), at, strip_left, strip_right, True)
    if c == "&":
        return _Tag("raw", content[1:].strip(), at, strip_left, strip_right, False)
    return _Tag("var", content, at, strip_left, strip_right, False)


def _apply_whitespace_control(tokens: list[_Token]) -> None:
    """`~` strips the whitespace on its side; a block, else, comment or partial tag alone on
    its line takes that line with it (Handlebars' standalone rule)."""
    last = len(tokens) - 1
    for idx, tok in enumerate(tokens):
        if not isinstance(tok, _Tag):
            continue
        before = tokens[idx - 1] if idx > 0 else None
        after = tokens[idx + 1] if idx < last else None
        if tok.strip_left and isinstance(before, str):
            tokens[idx - 1] = before = before.rstrip()
        if tok.strip_right and isinstance(after, str):
            tokens[idx + 1] = after = after.lstrip()
        if not tok.standalone_kind or isinstance(before, _Tag) or isinstance(after, _Tag):
            continue
        # the line starts here: at the template's start, or after a line end
        left_ok = before is None or _TRAILING_BLANK.search(before) is not None \
            or (idx == 1 and before.strip(" \t") == "")
        # and ends here: at a line end, or at the template's end
        cut = 0
        if after is not None:
            m = _LEADING_BLANK.match(after)
            if m is not None:
                cut = m.end()
            elif idx + 1 == last and after.strip(" \t") == "":
                cut = len(after)
            else:
                continue
        if not left_ok:
            continue
        if isinstance(before, str):
            tokens[idx - 1] = before.rstrip(" \t")
        if isinstance(after, str):
            tokens[idx + 1] = after[cut:]


# ---------------------------------------------------------------------- parsing

_PARAM = re.compile(r'"[^"]*"|\'[^\']*\'|(?:[^\s\[\]"\']+|\[[^\]]*\])+')
_NAME = re.compile(r"[^./\[\]\s]+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?\Z")
_BLOCKS: dict[str, BlockKind] = {"if": "if", "unless": "unless", "each": "each",
                                 "with": "with"}


def _params(text: str) -> list[str]:
    """The whitespace-separated parameters of a tag ("quoted strings" and [segments] may
    hold spaces); ValueError for anything else."""
    out: list[str] = []
    pos = 0
    for m in _PARAM.finditer(text):
        if text[pos:m.start()].strip():
            raise ValueError(text)
        out.append(m.group())
        pos = m.end()
    if text[pos:].strip():
        raise ValueError(text)
    return out


def _param(token: str) -> Param:
    if token[0] in "\"'":
        return Value(token[1:-1])
    if token in ("true", "false"):
        return Value(token == "true")
    if token in ("null", "undefined"):
        return Value(None)
    if _NUMBER.match(token):
        return Value(float(token) if "." in token else int(token))
    return _path(token)


def _path(token: str) -> Path:
    s, data, depth = token, False, 0
    if s.startswith("@"):
        data, s = True, s[1:]
    while s.startswith("../"):
        depth, s = depth + 1, s[3:]
    if s == "..":
        return Path(depth + 1, data, (), token)
    if s in ("this", "."):
        return Path(depth, data, (), token)
    for prefix in ("./", "this.", "this/"):
        if s.startswith(prefix):
            s = s[len(prefix):]
            break
    parts: list[str] = []
    pos = 0
    while pos < len(s):
        if s[pos] == "[":
            end = s.find("]", pos)
            if end < 0:
                raise ValueError(token)
            parts.append(s[pos + 1:end])
            pos = end + 1
        else:
            m = _NAME.match(s, pos)
            if m is None or m.group() == "..":
                raise ValueError(token)
            parts.append(m.group())
            pos = m.end()
        if pos < len(s):
            if s[pos] not in "./" or pos + 1 == len(s):
                raise ValueError(token)
            pos += 1
    if not parts or (data and not parts):
        raise ValueError(token)
    return Path(depth, data, tuple(parts), token)


@dataclass(slots=True)
class _Frame:
    target: list[Node]
    block: Block | None
    name: str  # the name its close tag must carry
    line: int
    chained: bool = False  # opened by {{else if ...}}: closed with its parent
    inline: str | None = None  # an inline partial's name


def parse(source: str, field_name: str = "", *, inline: bool = False) -> Part:
    """Compile one part (subject, text or HTML). TemplateError names `field_name`.
    `inline`: only simple substitutions (SES's inline TemplateContent)."""
    tokens = _tokens(source, field_name)
    root: list[Node] = []
    partials: dict[str, list[Node]] = {}
    stack = [_Frame(root, None, "", 0)]

    def fail(reason: str, tag: _Tag) -> TemplateError:
        return TemplateError(field_name, f"{reason} at line {_line_of(source, tag.at)}")

    for tok in tokens:
        top = stack[-1]
        if isinstance(tok, str):
            if tok:
                top.target.append(tok)
            continue
        if inline and tok.kind not in ("var", "raw", "comment"):
            raise TemplateError(field_name, UNSUPPORTED_INLINE)
        try:
            if tok.kind in ("var", "raw"):
                params = _params(tok.content)
                if len(params) != 1:
                    raise fail(f"helper '{params[0] if params else ''}' is not supported",
                               tok)
                top.target.append(Var(_param(params[0]), tok.kind == "raw"))
            elif tok.kind == "open":
                params = _params(tok.content)
                kind = _BLOCKS.get(params[0]) if params else None
                if kind is None:
                    raise fail(f"block helper '#{params[0] if params else ''}' is not "
                               "supported (only #if, #unless, #each, #with)", tok)
                if len(params) != 2:
                    raise fail(f"'#{kind}' takes one parameter", tok)
                block = Block(kind, _param(params[1]))
                top.target.append(block)
                stack.append(_Frame(block.body, block, kind, _line_of(source, tok.at)))
            elif tok.kind == "inline":
                params = _params(tok.content)
                if len(params) != 2 or params[0] != "inline" or params[1][0] not in "\"'":
                    raise fail("expected {{#*inline \"name\"}}", tok)
                body: list[Node] = []
                stack.append(_Frame(body, None, "inline", _line_of(source, tok.at),
                                    inline=params[1][1:-1]))
            elif tok.kind == "else":
                current = top.block
                if current is None or top.target is current.inverse:
                    raise fail("'{{else}}' outside an #if, #unless, #each or #with", tok)
                top.target = current.inverse
                if tok.content:
                    params = _params(tok.content)
                    kind = _BLOCKS.get(params[0]) if params else None
                    if kind not in ("if", "unless") or len(params) != 2:
                        raise fail("expected {{else}}, {{else if x}} or {{else unless x}}",
                                   tok)
                    chained = Block(kind, _param(params[1]))
                    current.inverse.append(chained)
                    stack.append(_Frame(chained.body, chained, top.name,
                                        _line_of(source, tok.at), chained=True))
            elif tok.kind == "close":
                if len(stack) == 1 or tok.content != top.name:
                    expected = f" (expected '{{{{/{top.name}}}}}')" if len(stack) > 1 else ""
                    raise fail(f"'{{{{/{tok.content}}}}}' closes nothing open{expected}", tok)
                done = stack.pop()
                while done.chained:
                    done = stack.pop()
                if done.inline is not None:
                    partials[done.inline] = done.target
            elif tok.kind == "partial":
                params = _params(tok.content)
                if not params or len(params) > 2:
                    raise fail("expected {{> name}} or {{> name context}}", tok)
                name = params[0][1:-1] if params[0][0] in "\"'" else params[0]
                top.target.append(PartialCall(
                    name, _param(params[1]) if len(params) == 2 else None))
        except ValueError as e:
            if isinstance(e, TemplateError):
                raise
            raise fail(f"cannot read '{tok.content}'", tok) from None
        if len(stack) > MAX_DEPTH:
            raise fail(f"blocks nested deeper than {MAX_DEPTH}", tok)
    if len(stack) > 1:
        top = stack[-1]
        raise TemplateError(field_name, f"'{{{{#{top.name}}}}}' opened at line {top.line} "
                            "is never closed")
    return Part(field_name, root, partials, source)


def compile_template(subject: str | None, text: str | None, html: str | None, *,
                     inline: bool = False, prefix: str = "TemplateContent."
                     ) -> CompiledTemplate:
    """Compile the parts of a template (None: the part is absent). Refuses, naming the
    field (`prefix` + Subject/Text/Html): a template over the size limit, one with neither
    text nor HTML, and any part that does not parse."""
    limit = MAX_INLINE_BYTES if inline else MAX_TEMPLATE_BYTES
    size = sum(len(p.encode("utf-8", "surrogatepass")) for p in (subject, text, html) if p)
    if size > limit:
        raise TemplateError(prefix.rstrip("."), f"the template is {size} bytes; at most "
                            f"{limit} bytes are allowed (subject, text and HTML together)")
    if not text and not html:
        raise TemplateError(prefix.rstrip("."), "a template needs a Text or an Html part")

    def one(name: str, source: str | None) -> Part | None:
        return None if source is None else parse(source, prefix + name, inline=inline)
    return CompiledTemplate(one("Subject", subject), one("Text", text), one("Html", html))


# ---------------------------------------------------------------------- data

def parse_data(template_data: str, field_name: str = "TemplateData") -> dict[str, Any]:
    """TemplateData (a JSON object as text) as a dict; TemplateDataError naming the field."""
    if not isinstance(template_data, str):
        raise TemplateDataError(f"{field_name}: expected a JSON object as a string")
    if len(template_data) > MAX_DATA_CHARS:
        raise TemplateDataError(f"{field_name}: {len(template_data)} characters; at most "
                                f"{MAX_DATA_CHARS} are allowed")
    try:
        data = json.loads(template_data)
    except RecursionError:
        raise TemplateDataError(f"{field_name}: nested deeper than {MAX_DATA_DEPTH} "
                                "levels") from None
    except ValueError as e:
        raise TemplateDataError(f"{field_name}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise TemplateDataError(f"{field_name}: expected a JSON object, got "
                                f"{type(data).__name__}")
    _check_depth(data, field_name)
    return data


def _check_depth(data: Any, field_name: str) -> None:
    todo: list[tuple[Any, int]] = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_DATA_DEPTH:
            raise TemplateDataError(f"{field_name}: nested deeper than {MAX_DATA_DEPTH} "
                                    "levels")
        if isinstance(value, dict):
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)


def merge_data(default: Mapping[str, Any], replacement: Mapping[str, Any]) -> dict[str, Any]:
    """SendBulkEmail's data for one entry: the default TemplateData with the entry's
    ReplacementTemplateData merged in key by key; objects merge recursively, anything else
    (arrays included) is replaced whole."""
    out = dict(default)
    for key, value in replacement.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = merge_data(old, value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------- rendering

@dataclass(slots=True)
class _Scope:
    ctx: Any
    data: dict[str, Any]


_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                          "'": "&#x27;", "`": "&#x60;", "=": "&#x3D;"})


def _falsy(value: Any) -> bool:
    """Handlebars' #if: absent, null, false, "", 0 and [] are false; {} is true."""
    if value is MISSING or value is None or value is False:
        return True
    if isinstance(value, str | list):
        return len(value) == 0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value == 0 or (isinstance(value, float) and math.isnan(value))
    return False


def _text(value: Any) -> str:
    """A value as Handlebars (JavaScript) prints it."""
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None or value is MISSING:
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return "[object Object]"


class _Renderer:
    def __init__(self, root: Mapping[str, Any], template_name: str) -> None:
        self.root = root
        self.template_name = template_name
        self.out: list[str] = []
        self.size = 0
        self.steps = 0

    def fail(self, message: str) -> RenderingFailure:
        return RenderingFailure(message, self.template_name)

    def render(self, part: Part, escape: bool) -> str:
        self.out = []
        self.walk(part.nodes, [_Scope(self.root, {})], part, escape, 0)
        return "".join(self.out)

    def emit(self, s: str) -> None:
        self.size += len(s)
        if self.size > MAX_OUTPUT_CHARS:
            raise self.fail(f"the rendered template exceeds {MAX_OUTPUT_CHARS} characters")
        self.out.append(s)

    def step(self) -> None:
        """One unit of work (a node, a loop turn): bounded by MAX_STEPS."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.fail(f"rendering the template takes more than {MAX_STEPS} steps")

    def value(self, param: Param, scopes: list[_Scope]) -> Any:
        if isinstance(param, Value):
            return param.value
        if param.depth >= len(scopes):
            return MISSING
        scope = scopes[-1 - param.depth]
        parts = param.parts
        if param.data:
            if parts[0] == "root":
                value: Any = self.root
            else:
                value = scope.data.get(parts[0], MISSING)
            parts = parts[1:]
        else:
            value = scope.ctx
        for name in parts:
            if isinstance(value, dict):
                value = value.get(name, MISSING)
            elif isinstance(value, list):
                if name == "length":
                    value = len(value)
                elif name.isascii() and name.isdigit() and int(name) < len(value):
                    value = value[int(name)]
                else:
                    return MISSING
            elif isinstance(value, str) and name == "length":
                value = len(value)
            else:
                return MISSING
        return value

    def walk(self, nodes: list[Node], scopes: list[_Scope], part: Part, escape: bool,
             depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(f"blocks and partials nested deeper than {MAX_DEPTH}")
        for node in nodes:
            self.step()
            if isinstance(node, str):
                self.emit(node)
            elif isinstance(node, Var):
                value = self.value(node.param, scopes)
                if value is MISSING or value is None:
                    source = node.param.source if isinstance(node.param, Path) else "null"
                    raise self.fail(missing_attribute(source))
                text = _text(value)
                self.emit(text.translate(_ESCAPES) if escape and not node.raw else text)
            elif isinstance(node, Block):
                self.block(node, scopes, part, escape, depth)
            else:
                self.partial(node, scopes, part, escape, depth)

    def block(self, node: Block, scopes: list[_Scope], part: Part, escape: bool,
              depth: int) -> None:
        value = self.value(node.param, scopes)
        kind = node.kind
        if kind == "if" or kind == "unless":
            if _falsy(value) == (kind == "unless"):
                self.walk(node.body, scopes, part, escape, depth + 1)
            else:
                self.walk(node.inverse, scopes, part, escape, depth + 1)
        elif kind == "with":
            if _falsy(value):
                self.walk(node.inverse, scopes, part, escape, depth + 1)
            else:
                scopes.append(_Scope(value, scopes[-1].data))
                self.walk(node.body, scopes, part, escape, depth + 1)
                scopes.pop()
        else:
            items: list[tuple[Any, Any]]
            if isinstance(value, list):
                items = list(enumerate(value))
            elif isinstance(value, dict):
                items = list(value.items())
            else:
                items = []
            if not items:
                self.walk(node.inverse, scopes, part, escape, depth + 1)
                return
            last = len(items) - 1
            keyed = isinstance(value, dict)
            for index, (key, item) in enumerate(items):
                self.step()  # a loop turn is work even when its body is empty
                data = {"index": index, "first": index == 0, "last": index == last}
                if keyed:
                    data["key"] = key
                scopes.append(_Scope(item, data))
                self.walk(node.body, scopes, part, escape, depth + 1)
                scopes.pop()

    def partial(self, node: PartialCall, scopes: list[_Scope], part: Part, escape: bool,
                depth: int) -> None:
        body = part.partials.get(node.name)
        if body is None:
            raise self.fail(f"The partial {node.name} could not be found")
        if node.param is None:
            self.walk(body, scopes, part, escape, depth + 1)
            return
        scopes.append(_Scope(self.value(node.param, scopes), scopes[-1].data))
        self.walk(body, [scopes[0], scopes[-1]], part, escape, depth + 1)
        scopes.pop()


def render(template: CompiledTemplate, data: Mapping[str, Any], *, template_name: str = "",
           html_escape: bool = False) -> Rendered:
    """Render every part with `data` (one budget for all three). RenderingFailure carries
    SES's message and `template_name`. A subject that renders with a line break fails too
    (it would be a header injection)."""
    r = _Renderer(data, template_name)
    subject = r.render(template.subject, False) if template.subject is not None else ""
    if "\r" in subject or "\n" in subject:
        raise r.fail("The rendered subject contains a line break")
    text = r.render(template.text, False) if template.text is not None else None
    html = r.render(template.html, html_escape) if template.html is not None else None
    return Rendered(subject, text, html)


def render_template(subject: str | None, text: str | None, html: str | None,
                    template_data: str, *, template_name: str = "", inline: bool = False,
                    html_escape: bool = False) -> Rendered:
    """Compile and render in one call: TemplateError (the template), TemplateDataError (the
    data), RenderingFailure (the two together)."""
    compiled = compile_template(subject, text, html, inline=inline)
    return render(compiled, parse_data(template_data), template_name=template_name,
                  html_escape=html_escape)
