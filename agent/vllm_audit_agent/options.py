"""How an agent option is declared once, and everything derived from that declaration.

An option is a field of `AgentConfig` (config.py) whose default is `declare(...)`: its flag,
environment variable, default, help and check sit in that one call, beside the field's name
and type. From the declarations come the `vllm-audit agent` flags (add_arguments), the values
those flags gave (from_args), reading the environment (read_env) and the README's table
(markdown_table), so an option cannot be settable one way and missing, or described
differently, another.

A flag wins over its variable, which wins over the default (AgentConfig.from_env).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: A check of a field's value: (field name, value), raises ValueError naming both.
Check = Callable[[str, Any], None]

#: Where a dataclass field keeps its Option (dataclasses' per-field metadata).
_METADATA_KEY = "vllm_audit_agent.option"
#: Field types read from text without a parser of their own (a flag's `type=`, an env var).
_PLAIN_KINDS: tuple[type, ...] = (str, int, float, Path, bool)


@dataclass(frozen=True)
class Option:
    """One `vllm-audit agent` option; `field` and `kind` come from the field it is declared on."""

    flag: str
    env: str
    default: Any
    #: What the option does; the help and the table add the variable and the default.
    help: str
    metavar: str | None = None
    #: What the flag (and the table) offers; without `parse` also what the field may hold.
    choices: tuple[str, ...] | None = None
    #: Text (flag or variable) to value, for a field that is not a plain str/int/float/Path/bool.
    parse: Callable[[str], Any] | None = None
    check: Check | None = None
    #: How the default reads, when `_show` would not say it (a level's name, not its number).
    show: Callable[[Any], str] | None = None
    #: What the default means, after it: "none: the WAL is the archive".
    default_note: str = ""
    #: An empty variable is a value (an empty list), not "unset".
    empty_env_is_value: bool = False
    #: The flag may be given more than once; its values are joined with commas for `parse`.
    repeatable: bool = False
    field: str = ""
    kind: type = str

    @property
    def dest(self) -> str:
        """The argparse attribute: from the flag, as argparse derives it (--shutdown-timeout ->
        shutdown_timeout), so `args.<dest>` stays what the chart tests read."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def is_switch(self) -> bool:
        """A bool field is a bare flag that turns it on (the variable can say either)."""
        return self.kind is bool and self.parse is None

    @property
    def default_text(self) -> str:
        shown = self.show(self.default) if self.show else _show(self.default, self.metavar)
        return f"{shown}: {self.default_note}" if self.default_note else shown

    def from_text(self, text: str, origin: str) -> Any:
        """The value `text` (from the variable or flag named `origin`) stands for."""
        if self.parse is not None:
            return self.parse(text)
        if self.kind is bool:
            return parse_bool(origin, text)
        if self.kind in (int, float):
            try:
                return self.kind(text)
            except ValueError:
                raise ValueError(f"{origin}={text!r} is not a {self.kind.__name__}") from None
        return self.kind(text)

    def validate(self, value: Any) -> None:
        if self.choices is not None and self.parse is None and value not in self.choices:
            raise ValueError(f"{self.field}={value!r}; expected one of {', '.join(self.choices)}")
        if self.check is not None:
            self.check(self.field, value)


def declare(flag: str, env: str, default: T, help: str, *, metavar: str | None = None,
            choices: tuple[str, ...] | None = None, parse: Callable[[str], Any] | None = None,
            check: Check | None = None, show: Callable[[Any], str] | None = None,
            default_note: str = "", empty_env_is_value: bool = False,
            repeatable: bool = False) -> T:
    """The default of a dataclass field that is an option (typed as the default, as
    dataclasses.field is, so the field keeps its own type)."""
    option = Option(flag=flag, env=env, default=default, help=help, metavar=metavar,
                    choices=choices, parse=parse, check=check, show=show,
                    default_note=default_note, empty_env_is_value=empty_env_is_value,
                    repeatable=repeatable)
    return dataclasses.field(default=default, metadata={_METADATA_KEY: option})


def options_of(cls: type[Any]) -> tuple[Option, ...]:
    """The options declared on a dataclass's fields, in field order (the order of the help and
    the table); a field without `declare` is not an option."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if _METADATA_KEY not in f.metadata:
            continue
        option = dataclasses.replace(f.metadata[_METADATA_KEY], field=f.name,
                                     kind=_kind(hints[f.name]))
        if option.kind not in _PLAIN_KINDS and option.parse is None:
            raise TypeError(f"option {f.name}: a {option.kind.__name__} field needs parse=")
        found.append(option)
    return tuple(found)


def _kind(hint: Any) -> type:
    """The type a value is read as: `Path | None` -> Path (None is only ever the default)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
    origin = typing.get_origin(hint)
    kind = hint if origin is None else origin
    assert isinstance(kind, type), hint
    return kind


def parse_bool(field: str, text: str) -> bool:
    key = text.strip().lower()
    if key in ("1", "true", "yes", "on"):
        return True
    if key in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{field}={text!r} is not true or false")


def positive(field: str, value: Any) -> None:
    if value <= 0:
        raise ValueError(f"{field}={value!r} must be > 0")


def not_negative(field: str, value: Any) -> None:
    if value < 0:
        raise ValueError(f"{field}={value!r} must be >= 0")


# --- what is derived -----------------------------------------------------------------------

def read_env(options: Iterable[Option], env: Mapping[str, str]) -> dict[str, Any]:
    """Field values from the variables that are set; an empty variable is unset unless the
    option says otherwise."""
    values: dict[str, Any] = {}
    for option in options:
        text = env.get(option.env)
        if text is None or (text == "" and not option.empty_env_is_value):
            continue
        values[option.field] = option.from_text(text, option.env)
    return values


def add_arguments(parser: argparse.ArgumentParser, options: Iterable[Option]) -> None:
    """One flag per option. default=None everywhere, so a flag not given leaves its variable
    in charge; the help shows the default that then applies."""
    for option in options:
        # argparse %-formats help strings.
        text = f"{option.help} (env {option.env}; default {option.default_text})".replace("%", "%%")
        if option.is_switch:
            parser.add_argument(option.flag, action="store_true", default=None, help=text)
            continue
        # A parsed option keeps its text (str) until from_args, so a bad value is reported by
        # its parser (as the variable's would be), not as argparse's "invalid value".
        kind: Callable[[str], Any] = str
        if option.parse is None and option.kind in (int, float, Path):
            kind = option.kind
        parser.add_argument(option.flag, type=kind, choices=option.choices,
                            metavar=option.metavar, help=text,
                            action="append" if option.repeatable else "store")


def from_args(options: Iterable[Option], args: argparse.Namespace) -> dict[str, Any]:
    """Field values of the flags given (for AgentConfig.from_env's overrides)."""
    values: dict[str, Any] = {}
    for option in options:
        value = getattr(args, option.dest)
        if isinstance(value, list):  # a repeatable flag: its values as one list for `parse`
            value = ",".join(value)
        if value is not None:
            values[option.field] = option.parse(value) if option.parse is not None else value
    return values


def markdown_table(options: Iterable[Option]) -> str:
    rows = ["| flag | environment variable | default | what it sets |", "|---|---|---|---|"]
    for option in options:
        if option.choices:
            flag = f"{option.flag} {{{','.join(option.choices)}}}"
        else:
            flag = f"{option.flag} {option.metavar}" if option.metavar else option.flag
        rows.append(f"| `{_cell(flag)}` | `{option.env}` | {_cell(option.default_text)} | "
                    f"{_cell(option.help)} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    # A pipe would end the cell; an angle bracket could open an HTML tag.
    return text.replace("|", "\\|").replace("<", "&lt;")


_UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


def _show(value: Any, metavar: str | None) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and metavar == "BYTES":
        for size, unit in _UNITS:
            if value and value % size == 0:
                return f"{value} ({value // size} {unit})"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)
