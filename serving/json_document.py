"""REST request bodies read as TF Serving reads them, and JSON values quoted as it quotes them.

TF Serving parses bodies with rapidjson in iterative mode with the NaN/Inf and stop-when-done
flags. `parse` accepts what that accepts and words its errors the same way:
* `NaN`, `Inf`, `Infinity` (with an optional `-`) are numbers;
* bytes after the first complete value are ignored;
* nesting depth is unbounded (no recursion here either);
* of duplicate object keys the first one counts (rapidjson's `FindMember`);
* a UTF-8 byte order mark is skipped;
* strings are not checked for valid UTF-8: invalid bytes survive into string tensors (see `utf8`).
Valid documents go through the standard library's C parser; anything it refuses (or nests too
deep for it) is parsed again by the iterative parser below, which either accepts it as rapidjson
would or raises `JsonSyntaxError` with rapidjson's message and byte offset.

`debug_string` renders a value the way TF Serving quotes one in an error message: rapidjson's
pretty writer with single-line arrays, cut off once 256 bytes are written.

Raises `JsonSyntaxError` (parse) only.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from typing import Any

MAX_DEBUG_BYTES = 256

_WHITESPACE = b" \t\n\r"
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(\.[0-9]*)?([eE][-+]?[0-9]*)?")
_PLAIN_STRING = re.compile(rb'"((?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*)"')
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class JsonSyntaxError(ValueError):
    """A body rapidjson would not parse; `str()` is TF Serving's message for it."""

    def __init__(self, reason: str, offset: int | None):
        self.reason = reason
        self.offset = offset
        where = "" if offset is None else f" at offset: {offset}"
        super().__init__(f"JSON Parse error: {reason}{where}")


def _first_key_wins(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        obj.setdefault(key, value)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_first_key_wins, parse_constant=_SPECIAL_FLOATS.__getitem__)


def parse(body: bytes) -> Any:
    """The first JSON value in `body`; JsonSyntaxError worded as rapidjson words it."""
    if not body:
        raise JsonSyntaxError("The document is empty", None)  # TF Serving's own check, before rapidjson
    start = _skip_whitespace(body, 3 if body.startswith(b"\xef\xbb\xbf") else 0)  # rapidjson skips a BOM
    if start == len(body):
        raise JsonSyntaxError("The document is empty.", start)
    try:
        return _DECODER.raw_decode(body.decode("utf-8"), start)[0]
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError too
        return _Parser(body).parse(start)


def utf8(text: str) -> bytes:
    """The bytes a parsed JSON string stands for (invalid UTF-8 and lone surrogates included)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")


def _skip_whitespace(body: bytes, pos: int) -> int:
    while pos < len(body) and body[pos] in _WHITESPACE:
        pos += 1
    return pos


class _Parser:
    """rapidjson's iterative parser, as far as TF Serving's flags make it differ from `json`."""

    def __init__(self, body: bytes):
        self.body = body

    def error(self, reason: str, pos: int) -> JsonSyntaxError:
        return JsonSyntaxError(reason, pos)

    def parse(self, pos: int) -> Any:
        body = self.body
        # Each open container: [container, key of the member being read (objects only)].
        stack: list[list] = []
        while True:
            pos = _skip_whitespace(body, pos)
            char = body[pos: pos + 1]
            if char == b"{" or char == b"[":
                container: Any = {} if char == b"{" else []
                stack.append([container, None])
                pos = _skip_whitespace(body, pos + 1)
                closing = b"}" if char == b"{" else b"]"
                if body[pos: pos + 1] == closing:
                    stack.pop()
                    value, pos = container, pos + 1
                elif char == b"{":
                    stack[-1][1], pos = self.key(pos)
                    continue
                else:
                    continue
            else:
                value, pos = self.scalar(pos)
            # A value is complete: store it and find what follows it.
            while True:
                if not stack:
                    return value  # stop when done: whatever follows the root is not read
                top = stack[-1]
                container = top[0]
                if isinstance(container, list):
                    container.append(value)
                else:
                    container.setdefault(top[1], value)
                pos = _skip_whitespace(body, pos)
                char = body[pos: pos + 1]
                if char == b",":
                    pos += 1
                    if isinstance(container, dict):
                        top[1], pos = self.key(_skip_whitespace(body, pos))
                    break
                if isinstance(container, list) and char == b"]" or isinstance(container, dict) and char == b"}":
                    stack.pop()
                    value, pos = container, pos + 1
                    continue
                if isinstance(container, list):
                    raise self.error("Missing a comma or ']' after an array element.", pos)
                raise self.error("Missing a comma or '}' after an object member.", pos)

    def key(self, pos: int) -> tuple[str, int]:
        """An object member's name and the position after its colon."""
        if self.body[pos: pos + 1] != b'"':
            raise self.error("Missing a name for object member.", pos)
        name, pos = self.string(pos)
        pos = _skip_whitespace(self.body, pos)
        if self.body[pos: pos + 1] != b":":
            raise self.error("Missing a colon after a name of object member.", pos)
        return name, pos + 1

    def scalar(self, pos: int) -> tuple[Any, int]:
        body = self.body
        char = body[pos: pos + 1]
        if char == b'"':
            return self.string(pos)
        for literal, value in ((b"true", True), (b"false", False), (b"null", None)):
            if char == literal[:1]:
                if body.startswith(literal, pos):
                    return value, pos + len(literal)
                raise self.error("Invalid value.", pos)
        return self.number(pos)

    def number(self, pos: int) -> tuple[Any, int]:
        body = self.body
        sign = -1.0 if body[pos: pos + 1] == b"-" else 1.0
        after_sign = pos + (sign < 0)
        if body.startswith(b"NaN", after_sign):
            return math.nan, after_sign + 3
        if body.startswith(b"Inf", after_sign):
            end = after_sign + 3
            if body[end: end + 1] == b"i":
                if not body.startswith(b"inity", end):
                    raise self.error("Invalid value.", end)
                end += 5
            return sign * math.inf, end
        match = _NUMBER.match(body, pos)
        if not match:
            raise self.error("Invalid value.", pos)
        fraction, exponent = match.group(1), match.group(2)
        if fraction == b".":
            raise self.error("Miss fraction part in number.", match.start(1) + 1)
        if exponent is not None and not exponent.lstrip(b"eE+-"):
            raise self.error("Miss exponent in number.", match.end())
        text = match.group(0)
        if fraction is None and exponent is None:
            return int(text), match.end()
        value = float(text)
        if math.isinf(value):
            raise self.error("Number too big to be stored in double.", pos)
        return value, match.end()

    def string(self, pos: int) -> tuple[str, int]:
        body = self.body
        match = _PLAIN_STRING.match(body, pos)
        if not match:
            raise self.error(*self._string_problem(pos))
        raw = match.group(1)
        text = raw.decode("utf-8", "surrogateescape")
        if b"\\" in raw:
            pair = re.search(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})", raw)
            if pair:
                raise self.error("The surrogate pair in string is invalid.", pos + 1 + pair.end())
            text = json.loads(f'"{text}"', strict=False)
        return text, match.end()

    def _string_problem(self, pos: int) -> tuple[str, int]:
        body = self.body
        i = pos + 1
        while i < len(body):
            byte = body[i]
            if byte == 0x22:  # the closing quote: the problem is elsewhere (not reached)
                break
            if byte == 0x5C:
                escape = body[i + 1: i + 2]
                if escape == b"u":
                    if not re.fullmatch(rb"[0-9a-fA-F]{4}", body[i + 2: i + 6]):
                        return "Incorrect hex digit after \\u escape in string.", i + 2
                    i += 6
                    continue
                if not escape or escape not in b'"\\/bfnrt':
                    return "Invalid escape character in string.", i + 1
                i += 2
                continue
            if byte < 0x20:
                return ("Missing a closing quotation mark in string." if byte == 0
                        else "Invalid encoding in string."), i
            i += 1
        return "Missing a closing quotation mark in string.", len(body)


# --- quoting values in error messages -------------------------------------------------------

def debug_string(value: Any) -> str:
    """`value` as TF Serving prints a JSON value in an error message (at most ~256 bytes)."""
    out = bytearray()
    # Work items: ("value", v), ("key", name), ("end", "}" or "]"); levels: [in_array, count].
    levels: list[list] = []
    work: list[tuple[str, Any]] = [("value", value)]
    while work and len(out) < MAX_DEBUG_BYTES:
        kind, item = work.pop()
        if kind == "end":
            in_array, count = levels.pop()
            if item == "}" and count:
                out += b"\n" + b"    " * len(levels)
            out += item.encode()
            continue
        _prefix(out, levels)
        if kind == "key":
            out += _string(item)
            continue
        if isinstance(item, dict):
            out += b"{"
            levels.append([False, 0])
            work.append(("end", "}"))
            for name, member in reversed(list(item.items())):
                work.append(("value", member))
                work.append(("key", name))
        elif isinstance(item, list):
            out += b"["
            levels.append([True, 0])
            work.append(("end", "]"))
            work.extend(("value", element) for element in reversed(item))
        else:
            scalar = _scalar(item)
            if scalar is None:
                break  # rapidjson's writer refuses NaN and infinities: the text stops here
            out += scalar
    return out.decode("utf-8", "replace")


def _prefix(out: bytearray, levels: list[list]) -> None:
    """What rapidjson's pretty writer puts before a value or key (kFormatSingleLineArray)."""
    if not levels:
        return
    level = levels[-1]
    in_array, count = level
    if in_array:
        if count:
            out += b", "
    else:
        if count:
            out += b",\n" if count % 2 == 0 else b": "
        else:
            out += b"\n"
        if count % 2 == 0:
            out += b"    " * len(levels)
    level[1] += 1


def _string(text: str) -> bytes:
    escaped = json.dumps(text, ensure_ascii=False)
    escaped = re.sub(r"\\u00([0-9a-f]{2})", lambda m: "\\u00" + m.group(1).upper(), escaped)
    return utf8(escaped)


def _scalar(value: Any) -> bytes | None:
    if value is None:
        return b"null"
    if value is True:
        return b"true"
    if value is False:
        return b"false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, float):
        return None if not math.isfinite(value) else _double(value).encode()
    return _string(str(value))


def _double(value: float) -> str:
    """rapidjson's `Writer::Double`: shortest digits, laid out by its `Prettify`."""
    if value == 0:
        return "-0.0" if math.copysign(1, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    shortest = decimal.Decimal(repr(abs(value))).normalize().as_tuple()
    digits, k = "".join(map(str, shortest.digits)), int(shortest.exponent)
    kk = len(digits) + k  # 10^(kk-1) <= value < 10^kk
    if 0 <= k and kk <= 21:
        return f"{sign}{digits}{'0' * k}.0"
    if 0 < kk <= 21:
        return f"{sign}{digits[:kk]}.{digits[kk:]}"
    if -6 < kk <= 0:
        return f"{sign}0.{'0' * -kk}{digits}"
    if len(digits) == 1:
        return f"{sign}{digits}e{kk - 1}"
    return f"{sign}{digits[0]}.{digits[1:]}e{kk - 1}"
