"""Text from files, made safe to print: control characters escaped, reprs bounded.

Strings that come from files (class names, dataset keys, attribute values, file paths,
messages quoting them) may carry terminal escapes, carriage returns, newlines or
bidirectional overrides that would let a file forge or hide lines of gpunet's output.
``escape`` shows each such character as a Python-style escape (``\\x1b``, ``\\n``, ``\\r``,
``\\t``, ``\\u202e``...), so one string prints as one line of visible characters; everything
else (letters of any script, spaces, punctuation, backslashes) is printed as it is.
``rich_text`` does the same and also escapes Rich's markup (``[bold]``) for output that goes
through a Rich console. JSON output needs neither: ``json_line`` escapes through
``json.dumps`` (ASCII only) and writes non-finite floats as ``null`` so the line stays valid
JSON.
"""

from __future__ import annotations

import json
import math
import reprlib
import unicodedata
from typing import Any

#: Unicode categories escaped: controls, format characters (bidi overrides, zero-width
#: joiners...), line / paragraph separators, lone surrogates (undecodable file names) and
#: unassigned code points
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    o = ord(c)
    if o <= 0xFF:
        return f"\\x{o:02x}"
    if o <= 0xFFFF:
        return f"\\u{o:04x}"
    return f"\\U{o:08x}"


def escape(text: object) -> str:
    """``str(text)`` with every control, format, separator, surrogate or unassigned
    character written as a backslash escape (``"a\\x1b[2Jb\\n"`` prints as
    ``a\\x1b[2Jb\\n``); printable text is unchanged."""
    s = str(text)
    if s.isprintable():  # the common case: nothing to escape (space is printable)
        return s
    return "".join(_escape_char(c) if unicodedata.category(c) in _ESCAPED_CATEGORIES else c
                   for c in s)


def one_line(msg: object) -> str:
    """A message collapsed to one line: its non-empty lines stripped and joined by ``"; "``
    (``"unknown error"`` when there are none)."""
    parts = [p.strip() for p in str(msg).splitlines() if p.strip()]
    return "; ".join(parts) if parts else "unknown error"


def rich_text(text: object) -> str:
    """``escape(text)`` with Rich's markup escaped too, for ``Console.print``."""
    from rich.markup import escape as markup_escape

    return markup_escape(escape(text))


_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def short_repr(value: Any) -> str:
    """A bounded ``repr`` for messages: long strings and deep or long containers are cut
    with ``...`` (a value read from a file can be megabytes long or nested thousands deep)."""
    try:
        return _REPR.repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """``obj`` as one line of strict JSON: ASCII only (``json.dumps`` escapes every control
    and non-ASCII character), NaN and infinities written as ``null``."""
    return json.dumps(_finite(obj), allow_nan=False)


__all__ = ["escape", "json_line", "one_line", "rich_text", "short_repr"]
