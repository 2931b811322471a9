"""One checker for every setting: each field of a spec names the rule its value must meet.

A rule knows how to test a value and how to say what it expects, so every message has
one shape: ``<section>.<key> must be <what>, got <value>`` (plus the fix, where one
helps). Specs list their rules in ``RULES`` and call ``check`` from ``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from superlens.errors import UserError


@dataclass(frozen=True)
class Rule:
    test: Callable[[Any], bool]
    says: str  # what a valid value is, e.g. "a positive integer"
    fix: str = ""  # appended to the message, e.g. "(zero rounds query nothing)"

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except TypeError:  # a comparison with a value of the wrong type
            return False

    def hinted(self, fix: str) -> "Rule":
        return Rule(self.test, self.says, fix)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range_words(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'<' if hi_open else '<='} {hi:g}" if hi is not None else ""


def _in_range(v, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def integer(lo: int | None = None, hi: int | None = None) -> Rule:
    if lo == 1 and hi is None:
        says = "a positive integer"
    else:
        says = f"an integer {_range_words(lo, hi, False, False)}".rstrip()
    return Rule(lambda v: _is_int(v) and _in_range(v, lo, hi, False, False), says)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Rule:
    says = "a positive number" if (lo == 0 and lo_open and hi is None) else f"a number {_range_words(lo, hi, lo_open, hi_open)}"
    return Rule(lambda v: _is_number(v) and _in_range(v, lo, hi, lo_open, hi_open), says.rstrip())


def one_of(*options: Any) -> Rule:
    return Rule(lambda v: any(v == o and type(v) is type(o) for o in options), f"one of {', '.join(map(repr, options))}")


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


def text() -> Rule:
    return Rule(lambda v: isinstance(v, str) and bool(v), "a non-empty string")


def mapping() -> Rule:
    return Rule(lambda v: isinstance(v, dict), "a mapping of keys to values")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule(v), f"null or {rule.says}", rule.fix)


def either(*rules: Rule) -> Rule:
    return Rule(lambda v: any(r(v) for r in rules), " or ".join(r.says for r in rules))


def sequence_of(rule: Rule, size: int | None = None, nonempty: bool = True) -> Rule:
    count = f"{size} values, each" if size else ("a non-empty list, each" if nonempty else "a list, each")

    def test(v):
        return (isinstance(v, (list, tuple)) and (size is None or len(v) == size) and (len(v) > 0 or not nonempty)
                and all(rule(x) for x in v))

    return Rule(test, f"{count} {rule.says}")


def anything() -> Rule:
    return Rule(lambda v: True, "anything")


def check(spec: Any) -> None:
    """Raise a UserError naming the first field of ``spec`` whose value breaks its rule."""
    for name, rule in type(spec).RULES.items():
        value = getattr(spec, name)
        if not rule(value):
            fix = f" {rule.fix}" if rule.fix else ""
            raise UserError(f"{type(spec).SECTION}.{name} must be {rule.says}, got {value!r}{fix}")


def known_keys(cls: type, section: str, values: dict[str, Any], where: str = "") -> None:
    """Raise a UserError for a key of ``values`` that ``cls`` (a dataclass) has no field for."""
    known = [f.name for f in fields(cls)]
    for key in values:
        if key not in known:
            raise UserError(f"unknown {section} key {key!r}{where}; known: {', '.join(sorted(known))}")
