"""What the consent store can hold, checked where input arrives (docs/decisions/0011-unstorable-input.md).

PostgreSQL text and JSON cannot hold U+0000, and no UTF-8 encoder (psycopg's, sqlite3's, our hashes')
can encode a lone surrogate (U+D800-U+DFFF), which Python's json module happily decodes from
`"\\ud800"`. Either one reaching a write used to fail the request with a 500, after some of it had
been read and before anything was kept. Deeply nested JSON made the parser itself raise
RecursionError, and numbers our JSON columns and hashes cannot carry faithfully (NaN, Infinity,
integers past 64 bits) got as far as the database too.

Two ways to deal with such input, chosen per caller:

* refuse it, naming where it is (`check_json`, the API's edge: nothing has been changed yet, the
  caller fixes it and retries);
* keep what can be kept (`storable_text` replaces each unstorable character with U+FFFD; `escaped`
  keeps the original as ASCII escapes) where refusing would lose something that must not be lost,
  such as a person's STOP.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

# U+0000 and the surrogate code points: the characters no store or encoder we use can hold.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
MAX_DEPTH = 32  # arrays and objects inside one another; no request of ours needs more than three
MIN_INT, MAX_INT = -(2**63), 2**63 - 1  # what a BIGINT, and most JSON readers, hold exactly
_MAX_INT_CHARS = len(str(MIN_INT))
_MAX_PATH_CHARS = 200
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def unstorable_reason(text: str) -> str | None:
    """Why `text` cannot be stored as it is, or None when it can."""
    match = UNSTORABLE.search(text)
    if match is None:
        return None
    char = match.group()
    if char == "\x00":
        return "contains a NUL character (U+0000), which cannot be stored"
    return f"contains a lone surrogate (U+{ord(char):04X}), which is not Unicode text and cannot be stored"


def storable_text(text: str) -> str:
    """`text` with each character the store cannot hold replaced by U+FFFD (the same object if none)."""
    return UNSTORABLE.sub(REPLACEMENT, text) if UNSTORABLE.search(text) else text


def without_unstorable(text: str) -> str:
    """`text` with the characters the store cannot hold removed: for reading words, not for keeping."""
    return UNSTORABLE.sub("", text)


def escaped(text: str) -> str:
    """`text` as JSON string escapes, ASCII only: a faithful, storable record of any str."""
    return json.dumps(text)[1:-1]


# ------------------------------------------------------------------------------------------------
# JSON

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """A place in a JSON document the store cannot take, and why."""

    path: Path
    reason: str

    @property
    def field(self) -> str:
        return path_text(self.path)

    def message(self) -> str:
        return f"{self.field} {self.reason}"


def path_text(path: Path) -> str:
    """`evidence.note`, `recipients[3]`, `evidence["odd key"]`; `$` for the document itself."""
    if not path:
        return "$"
    parts = []
    for step in path:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _NAME.match(step):
            parts.append(f".{step}" if parts else step)
        else:
            parts.append(f"[{json.dumps(step)}]")  # ASCII escapes: a NUL or surrogate key stays printable
    text = "".join(parts)
    return text if len(text) <= _MAX_PATH_CHARS else text[:_MAX_PATH_CHARS - 1] + "…"


class NotJson(ValueError):
    """The text is not a JSON document."""


class _Unstorable:
    """Put by the parser where a number was that the store cannot take; `check_json` reports it."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _decoder(met: list[_Unstorable]) -> json.JSONDecoder:
    """A JSON decoder that puts an _Unstorable (also added to `met`) for each number we refuse."""

    def unstorable(reason: str) -> _Unstorable:
        marker = _Unstorable(reason)
        met.append(marker)
        return marker

    def integer(text: str):
        # Checked on the text first: Python refuses to convert integers of more than 4,300 digits.
        if len(text) <= _MAX_INT_CHARS and MIN_INT <= (value := int(text)) <= MAX_INT:
            return value
        return unstorable("is an integer outside the 64-bit range")

    def real(text: str):
        value = float(text)
        return value if math.isfinite(value) else unstorable("is a number too large to store")

    def constant(name: str):
        return unstorable(f"is {name}, which JSON does not allow")

    return json.JSONDecoder(parse_int=integer, parse_float=real, parse_constant=constant)


# Containers nested too deep for the parser are cut out and parsing tried again, this many times at most.
_MAX_CUTS = 16


@dataclass(frozen=True)
class Checked:
    """A parsed JSON document and what in it the store cannot take (empty: all of it can)."""

    value: object
    problems: tuple[Problem, ...]


def check_json(text: str, *, max_depth: int = MAX_DEPTH) -> Checked:
    """Parse `text` and find what the store cannot take: NUL or lone surrogates in any key or string,
    nesting deeper than `max_depth`, NaN, Infinity, integers past 64 bits, floats that overflow.

    Raise NotJson when `text` is not JSON. Nothing inside a bad key or a too-deep container is looked
    at. A container nested so deep that the parser gives up (RecursionError, near a thousand levels)
    is cut out and stands as null in `value`; such problems come first, the others follow in
    document order. After `_MAX_CUTS` cuts, `value` is None and the problems say where they were.
    """
    cut: list[Problem] = []
    numbers: list[_Unstorable] = []
    decoder = _decoder(numbers)
    while True:
        try:
            value = decoder.decode(text)
            break
        except RecursionError:
            path, start, end = _too_deep_at(text, max_depth)
            cut.append(Problem(path, _too_deep(max_depth)))
            if len(cut) == _MAX_CUTS:
                return Checked(None, tuple(cut))
            text = text[:start] + "null" + text[end:]
            numbers.clear()
        except ValueError as error:
            raise NotJson(str(error)) from None
    # Only an escape can put a NUL or a surrogate in a strictly decoded text, and only as many
    # brackets as the limit can nest that deep: most documents need no walk.
    if not (cut or numbers or "\\u" in text or text.count("[") + text.count("{") > max_depth):
        return Checked(value, ())
    return Checked(value, (*cut, *_problems(value, (), 1, max_depth)))


def _too_deep(limit: int) -> str:
    return f"nests arrays and objects more than {limit} deep"


def _problems(value, path: Path, depth: int, limit: int) -> Iterator[Problem]:
    if isinstance(value, str):
        reason = unstorable_reason(value)
        if reason:
            yield Problem(path, reason)
    elif isinstance(value, dict):
        if depth > limit:
            yield Problem(path, _too_deep(limit))
            return
        for key, item in value.items():
            reason = unstorable_reason(key)
            if reason:
                yield Problem((*path, key), reason.replace("contains", "has a name that contains", 1))
                continue
            yield from _problems(item, (*path, key), depth + 1, limit)
    elif isinstance(value, list):
        if depth > limit:
            yield Problem(path, _too_deep(limit))
            return
        for index, item in enumerate(value):
            yield from _problems(item, (*path, index), depth + 1, limit)
    elif isinstance(value, _Unstorable):
        yield Problem(path, value.reason)


# A string; one bracket; or a run of anything else (numbers, literals, commas, colons, blanks).
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_TOKEN = re.compile(_STRING + r'|[\[\]{}]|[^\[\]{}"]+')
_BRACKET_RUNS = re.compile(_STRING + r'|[\[{]+|[\]}]+')


def _too_deep_at(text: str, limit: int) -> tuple[Path, int, int]:
    """Where in `text` (which the parser found nested too deep) a container first opens deeper than
    `limit`: its path, and the span of its text."""
    stack: list[list] = []  # per open container: [is_object, the current key or index (None: none yet)]
    for token in _TOKEN.finditer(text):
        part = token.group()
        if part == "[" or part == "{":
            if len(stack) == limit:
                path = tuple(step for _, step in stack if step is not None)
                return path, token.start(), _closing(text, token.end())
            stack.append([part == "{", None if part == "{" else 0])
        elif part == "]" or part == "}":
            if stack:
                stack.pop()
        elif not stack:
            continue
        elif part[0] != '"':
            commas = part.count(",")
            if commas:  # the next element of an array; in an object, the next key is due
                top = stack[-1]
                top[1] = None if top[0] else top[1] + commas
        elif stack[-1][0] and stack[-1][1] is None:  # a string where an object's key is due
            try:
                stack[-1][1] = json.loads(part)
            except ValueError:
                stack[-1][1] = part[1:-1]
    raise NotJson("nested too deep, yet no container opens deeper than the limit")


def _closing(text: str, position: int) -> int:
    """The end of the container that opened just before `position`."""
    depth = 1
    for token in _BRACKET_RUNS.finditer(text, position):
        run = token.group()
        if run[0] in "[{":
            depth += len(run)
        elif run[0] in "]}":
            if len(run) >= depth:
                return token.start() + depth
            depth -= len(run)
    raise NotJson("an array or object is not closed")


def drop(value, problems: tuple[Problem, ...] | list[Problem]):
    """`value` (a parsed document, changed in place) without the places `problems` name.

    An object loses the key; an array the element (the later ones move up). Problems at the
    document itself leave None.
    """
    if any(not problem.path for problem in problems):
        return None
    emptied = []
    for problem in problems:
        parent = value
        for step in problem.path[:-1]:
            parent = parent[step]
        last = problem.path[-1]
        if isinstance(parent, dict):
            parent.pop(last, None)
        else:
            parent[last] = _DROPPED
            emptied.append(parent)
    for array in emptied:
        array[:] = [item for item in array if item is not _DROPPED]
    return value


_DROPPED = object()
