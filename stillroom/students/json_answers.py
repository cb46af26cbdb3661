"""Reading and writing a JSON answer of the LM student: the grammar its decoding follows, where each
field lies, repairing a cut answer, and snapping copied strings back to the input. Pure text, used at inference.

A value copied from the input is compared after JSON-decoding: the answer holds `"\\"Spring\\" sale"`
where the input holds `"Spring" sale`, and an input that is itself JSON holds it escaped, so the
input is read both as written and with its JSON escapes decoded (`source_views`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Characters that open a quoted or bracketed value: a copied span never grows over one.
_OPENERS = frozenset("\"'“‘«([{<")
# Delimiters that frame a value when unbalanced in it: '"Jane Q. Doe' is Jane Q. Doe with a framing quote.
_PAIRS = {'"': '"', "“": "”", "«": "»", "(": ")", "[": "]", "{": "}", "<": ">"}
_CLOSERS = {closer: opener for opener, closer in _PAIRS.items()}
_ESCAPE = re.compile(r'\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\["\\/bfnrt]')
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = {"t": "true", "f": "false", "n": "null"}


# ------------------------------------------------------------------ copying from the input


def source_views(source: str) -> tuple[str, ...]:
    """The input as written and, when it holds JSON escapes, with them decoded: a copied value is in one of them."""
    decoded = _ESCAPE.sub(lambda m: json.loads(f'"{m.group()}"'), source) if "\\" in source else source
    return (source,) if decoded == source else (source, decoded)


def is_copied(value: str, views: Sequence[str]) -> bool:
    return any(value in view for view in views)


def copied_share(pairs: Iterable[tuple[str, object]]) -> float | None:
    """The share of the answers' strings (any depth) found verbatim in their inputs, from (input, parsed answer)
    pairs; None when the answers hold no string. Near 1, the task is extraction."""
    values = found = 0
    for source, answer in pairs:
        views = source_views(source)
        for value in json_strings(answer):
            values += 1
            found += is_copied(value, views)
    return found / values if values else None


# Arrays of two or more items that must all be free of repeats before answers are held to distinct items.
UNIQUE_ITEMS_EVIDENCE = 10


def items_never_repeat(answers: Iterable[object]) -> bool:
    """No array of any answer repeats an item, over at least UNIQUE_ITEMS_EVIDENCE arrays that could have (two or
    more items): then a repeat in a student's answer is a slip, and is dropped."""
    could_repeat = [items for answer in answers for items in json_lists(answer) if len(items) >= 2]
    return len(could_repeat) >= UNIQUE_ITEMS_EVIDENCE and all(distinct_items(i) == i for i in could_repeat)


def json_strings(value: object) -> Iterable[str]:
    """Every string value at any depth, keys excepted: what an extraction task copies."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)


def json_lists(value: object) -> Iterable[list]:
    """Every array at any depth, outermost first."""
    if isinstance(value, dict):
        for item in value.values():
            yield from json_lists(item)
    elif isinstance(value, list):
        yield value
        for item in value:
            yield from json_lists(item)


def distinct_items(value: Any) -> Any:
    """The value with each array's repeated items dropped (the first kept), at any depth: a small model
    that loses its place in a list writes an item again, where the teacher never does."""
    if isinstance(value, dict):
        return {key: distinct_items(item) for key, item in value.items()}
    if not isinstance(value, list):
        return value
    seen, out = set(), []
    for item in (distinct_items(item) for item in value):
        key = json.dumps(item, sort_keys=True, ensure_ascii=False)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def strip_framing(value: str) -> str:
    """Drop a quote or bracket at either edge that the value does not close (or open) itself: it framed
    the value in the input. `"Spring" sale starts` keeps its balanced quotes; `"Jane Q. Doe` loses one."""
    while value:
        first, last = value[0], value[-1]
        if first in _PAIRS and (value.count(first) % 2 if first == _PAIRS[first] else _PAIRS[first] not in value):
            value = value[1:].lstrip()
        elif last in _CLOSERS and (value.count(last) % 2 if last == _CLOSERS[last] else _CLOSERS[last] not in value):
            value = value[:-1].rstrip()
        else:
            return value
    return value


def _word_start(text: str, at: int) -> bool:
    return at == 0 or text[at - 1].isspace() or text[at - 1] in _OPENERS


def _occurrences(text: str, piece: str) -> Iterable[int]:
    at = text.find(piece)
    while at >= 0:
        yield at
        at = text.find(piece, at + 1)


def ground_in_source(answer: dict | list, source: str) -> dict | list:
    """Snap each extracted string to the input's own text; drop list items the input does not contain.

    A value is found as written, else ignoring case, else by the longest run of its words the
    input contains ("J Joaquin Phoenix" -> "Joaquin Phoenix"), in the input as written or with its
    JSON escapes decoded. The span then grows left to the start of its word, as the teacher copies
    whole words ("-Larry Bird" in "-Larry Bird said"), but never over an opening quote or bracket,
    and not when the value is also written whole elsewhere; a quote the value leaves unbalanced is
    dropped first ('"Jane Q. Doe' gives Jane Q. Doe).
    A string outside a list that is not found is kept as written; an object's keys are kept.
    """
    views = source_views(source)
    folded = [view.casefold() for view in views]

    def snap(value: str) -> str | None:
        words = strip_framing(value).split()
        for size in range(len(words), 0, -1):
            for first in range(len(words) - size + 1):
                piece = " ".join(words[first : first + size])
                for view, lowered in zip(views, folded, strict=True):
                    at = view.find(piece)
                    if at < 0 and len(lowered) == len(view):  # casefold kept the offsets
                        at = lowered.find(piece.casefold())
                    if at >= 0 and piece == value and any(_word_start(view, i) for i in _occurrences(view, piece)):
                        return value  # the input holds it whole somewhere ("diggy" in '["diggy"]', not "@diggy")
                    if at >= 0:
                        start = at
                        while not _word_start(view, start):
                            start -= 1
                        return view[start : at + len(piece)]
        return None

    def ground(value: Any, in_list: bool) -> Any:
        if isinstance(value, str):
            snapped = snap(value)
            return snapped if snapped is not None or in_list else value
        if isinstance(value, dict):
            return {key: ground(item, False) for key, item in value.items()}
        if isinstance(value, list):
            return [item for item in (ground(item, True) for item in value) if item is not None]
        return value

    return ground(answer, False)


# ------------------------------------------------------------------ where the fields lie


def json_field_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of every top-level field (key through value) of a text that is one JSON object;
    a top-level array is one field, keyed "": its items and where it ends are the answer."""
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        match = _JSON_WHITESPACE.match(text, i)
        return match.end() if match else i

    i = skip(0)
    if text[i : i + 1] == "[":
        _, end = decoder.raw_decode(text, i)
        return {"": (i, end)}
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object or array")
    spans: dict[str, tuple[int, int]] = {}
    i = skip(i + 1)
    if text[i : i + 1] == "}":
        return spans
    while True:
        start = i
        key, i = decoder.raw_decode(text, i)
        i = skip(i)
        if text[i : i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        _, i = decoder.raw_decode(text, skip(i + 1))
        spans[str(key)] = (start, i)
        i = skip(i)
        if text[i : i + 1] == ",":
            i = skip(i + 1)
        elif text[i : i + 1] == "}":
            return spans
        else:
            raise ValueError(f"expected ',' or '}}' at {i}")


# ------------------------------------------------------------------ the grammar decoding follows

_VALUE, _ITEM_OR_END, _KEY_OR_END, _KEY, _COLON, _AFTER, _STRING, _NUMBER_MODE, _LITERAL, _DONE = range(10)
_FIRST_CHARS = {
    "object": "{",
    "array": "[",
    "string": '"',
    "number": "-0123456789",
    "integer": "-0123456789",
    "boolean": "tf",
    "null": "n",
}
_ANY_VALUE = '{["-0123456789tfn'


def _first_chars(schema: dict | None, top: bool) -> str:
    """The characters a value of the schema's types may start with; a whole answer is an object or array."""
    types = (schema or {}).get("type")
    allowed = "".join(_FIRST_CHARS.get(t, "") for t in ([types] if isinstance(types, str) else types or []))
    if top:
        return "".join(c for c in allowed if c in "{[") or "{["
    return allowed or _ANY_VALUE


class _Frame(NamedTuple):
    """One open container: its bracket, its schema and, for an object, the keys written so far."""

    bracket: str
    schema: dict | None
    used: frozenset[str] = frozenset()

    def keys(self) -> tuple[str, ...] | None:
        """The keys an object may have: its schema's properties, unless the schema allows others."""
        schema = self.schema or {}
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties or schema.get("additionalProperties", False):
            return None
        return tuple(properties)

    def free_keys(self, start: str) -> list[str] | None:
        keys = self.keys()
        return None if keys is None else [k for k in keys if k not in self.used and k.startswith(start)]

    def required_written(self) -> bool:
        return self.keys() is None or set((self.schema or {}).get("required") or ()) <= self.used

    def child(self, key: str | None) -> dict | None:
        """The schema of an item (key None) or of a property's value."""
        schema = self.schema or {}
        child = schema.get("items") if key is None else (schema.get("properties") or {}).get(key)
        return child if isinstance(child, dict) else None


class JsonCursor:
    """How far a JSON answer has been written, one character at a time: `feed` refuses any character
    after which the text could no longer become an answer the task allows.

    Allowed: one JSON object or array that keeps to the `schema`'s types (the answer's, an array's
    items', an object's properties'), whose objects use only their schema's keys, each once, and close
    once the required ones are written; and, with `views`, every string that is not a key a span of
    one of the views (see `source_views`), checked on its decoded characters, so `\\"` is a quote
    like any other and an escape may be split across tokens. `clean` is the longest prefix that ends
    at a value boundary (after an opening bracket or a complete value): what `close_json` keeps.
    """

    __slots__ = (
        "clean",
        "clean_frames",
        "content",
        "escape",
        "expect",
        "frames",
        "is_key",
        "literal",
        "mode",
        "space",
        "views",
        "written",
    )

    def __init__(self, schema: dict | None = None, views: Sequence[str] | None = None):
        self.views = tuple(views) if views is not None else None
        self.mode = _VALUE
        self.frames: tuple[_Frame, ...] = ()  # the open containers, innermost last
        self.expect: dict | None = schema  # the schema of the value about to start
        self.content = ""  # the string (decoded), number or literal being written
        self.is_key = False
        self.escape = ""  # an escape begun and not finished: "\\", "\\u", "\\u0", ...
        self.literal = ""
        self.written = 0
        self.space = 0  # whitespace in a row between values
        self.clean, self.clean_frames = 0, ()

    def copy(self) -> JsonCursor:
        other = JsonCursor.__new__(JsonCursor)
        for name in JsonCursor.__slots__:
            setattr(other, name, getattr(self, name))
        return other

    @property
    def done(self) -> bool:
        return self.mode == _DONE

    def feed(self, text: str) -> bool:
        """Advance over `text`; False (and a cursor to throw away) as soon as it leaves the grammar."""
        for char in text:
            if not self._step(char):
                return False
            self.written += 1
            if self.mode in (_ITEM_OR_END, _KEY_OR_END, _AFTER):
                self.clean, self.clean_frames = self.written, self.frames
        return True

    def _step(self, char: str) -> bool:
        mode = self.mode
        if mode == _STRING:
            return self._string_char(char)
        if mode == _NUMBER_MODE:
            if _NUMBER.fullmatch(self.content + char) or _NUMBER.fullmatch(self.content + char + "0"):
                self.content += char
                return True
            if not _NUMBER.fullmatch(self.content):
                return False
            self._value_done()
            self.clean, self.clean_frames = self.written, self.frames
            return self._step(char)
        if mode == _LITERAL:
            self.content += char
            if not self.literal.startswith(self.content):
                return False
            if self.content == self.literal:
                self._value_done()
            return True
        if char in " \t\n\r":
            # A line break and indentation of at most 4 a level: a model cannot idle on whitespace.
            self.space += 1
            return self.space <= 2 + 4 * len(self.frames)
        self.space = 0
        if mode == _DONE:
            return False
        if mode in (_KEY_OR_END, _KEY):
            if char == "}" and mode == _KEY_OR_END:
                return self._close(char)
            if char != '"':
                return False
            self.mode, self.is_key, self.content = _STRING, True, ""
            return self._string_allowed()
        if mode == _COLON:
            if char != ":":
                return False
            self.mode = _VALUE
            return True
        if mode == _AFTER:
            if char != ",":
                return self._close(char)
            frame = self.frames[-1]
            if frame.bracket == "[":
                self.mode, self.expect = _VALUE, frame.child(None)
                return True
            self.mode = _KEY
            return frame.free_keys("") != []  # a comma needs a key left to follow it
        if mode == _ITEM_OR_END and char == "]":
            return self._close(char)
        return self._value_start(char)

    def _value_start(self, char: str) -> bool:
        if char not in _first_chars(self.expect, not self.frames):
            return False
        if char in "{[":
            self.frames = (*self.frames, _Frame(char, self.expect))
            self.mode = _KEY_OR_END if char == "{" else _ITEM_OR_END
            self.expect = self.frames[-1].child(None) if char == "[" else None
            return True
        if char == '"':
            self.mode, self.is_key, self.content = _STRING, False, ""
            return self._string_allowed()
        if char in "-0123456789":
            self.mode, self.content = _NUMBER_MODE, char
            return True
        self.mode, self.literal, self.content = _LITERAL, _LITERALS[char], char
        return True

    def _close(self, char: str) -> bool:
        if not self.frames or char != ("}" if self.frames[-1].bracket == "{" else "]"):
            return False
        if not self.frames[-1].required_written():
            return False  # the schema's required keys come first
        self.frames = self.frames[:-1]
        self._value_done()
        return True

    def _value_done(self) -> None:
        self.mode = _AFTER if self.frames else _DONE
        self.content = ""

    def _string_char(self, char: str) -> bool:
        if self.escape:
            return self._escape_char(char)
        if char == "\\":
            self.escape = "\\"
            # after the backslash any escape may follow (a \u one spells its character in four hex digits)
            return not self._constrained() or bool(self._next_chars())
        if char == '"':
            return self._string_end()
        if char < " ":
            return False  # a raw control character: JSON wants it escaped
        self.content += char
        return self._string_allowed()

    def _escape_char(self, char: str) -> bool:
        if self.escape == "\\":
            if char == "u":
                self.escape = "\\u"
                return self._hex_possible()
            if char not in _SIMPLE_ESCAPES:
                return False
            self.escape = ""
            self.content += _SIMPLE_ESCAPES[char]
            return self._string_allowed()
        if char not in "0123456789abcdefABCDEF":
            return False
        self.escape += char
        if len(self.escape) < 6:
            return self._hex_possible()
        self.content += chr(int(self.escape[2:], 16))
        self.escape = ""
        return self._string_allowed()

    def _constrained(self) -> bool:
        return self.frames[-1].keys() is not None if self.is_key else self.views is not None

    def _hex_possible(self) -> bool:
        """A `\\u` escape begun in a constrained string must be able to end in a character it allows."""
        if not self._constrained():
            return True
        typed = self.escape[2:].lower()
        return any(f"{ord(char):04x}".startswith(typed) for char in self._next_chars())

    def _next_chars(self) -> set[str]:
        """The characters a constrained string may go on with."""
        if self.is_key:
            size = len(self.content)
            return {key[size] for key in self.frames[-1].free_keys(self.content) or () if len(key) > size}
        size = len(self.content)
        return {
            view[at + size]
            for view in self.views or ()
            for at in _occurrences(view, self.content)
            if at + size < len(view)
        }

    def _string_allowed(self) -> bool:
        if not self._constrained():
            return True
        if self.is_key:
            return bool(self.frames[-1].free_keys(self.content))
        return is_copied(self.content, self.views or ())

    def _string_end(self) -> bool:
        if not self.is_key:
            self._value_done()
            return True
        frame = self.frames[-1]
        if self._constrained() and self.content not in (frame.free_keys(self.content) or ()):
            return False
        self.frames = (*self.frames[:-1], frame._replace(used=frame.used | {self.content}))
        self.mode, self.expect, self.content = _COLON, frame.child(self.content), ""
        return True

    def accepts_start_of(self, partial: bytes) -> bool:
        """Whether a character whose UTF-8 encoding starts with `partial` (a token cut it) may come next."""
        if self.mode != _STRING or self.escape:
            return False  # outside a string only ASCII is JSON
        if not self._constrained():
            return True
        return any(char.encode("utf-8").startswith(partial) for char in self._next_chars())

    def forced(self) -> str:
        """The closing braces that are the only way on (an object whose keys are all written can only
        close), "" while the model still has a choice: decoding writes them without asking the model."""
        out, cursor = "", self.copy()
        while cursor.mode == _AFTER and cursor.frames[-1].free_keys("") == [] and cursor._close("}"):
            out += "}"
        return out

    def continuation(self, size: int = 40) -> str:
        """Inside a copied string: the input after its first occurrence of what is written so far, escaped
        as the answer writes it (a likely next stretch, for decoding to check); "" elsewhere."""
        if self.mode != _STRING or self.is_key or self.escape or not self.content or not self.views:
            return ""
        for view in self.views:
            at = view.find(self.content)
            if at >= 0:
                after = view[at + len(self.content) : at + len(self.content) + size]
                return json.dumps(after, ensure_ascii=False)[1:-1]
        return ""

    def closing(self) -> str:
        """What closes the containers open at `clean`."""
        return "".join("}" if frame.bracket == "{" else "]" for frame in reversed(self.clean_frames))


def close_json(text: str) -> str | None:
    """A cut answer made whole: kept up to its last value boundary, its open brackets closed, so a
    list cut mid-string keeps the items it finished. None when the text is not the start of JSON."""
    cursor = JsonCursor()
    start = len(text) - len(text.lstrip())
    if not cursor.feed(text[start:]):
        return None
    if cursor.done:
        return text
    if not cursor.clean:
        return None
    return text[: start + cursor.clean] + cursor.closing()
