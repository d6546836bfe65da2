"""Options declared once: a config dataclass field carries its command-line help, flag and range (`opt`).

    lr: float = field(default=1e-3, metadata=opt("Peak learning rate.", gt=0))

`check_fields` checks every such field's range and choices (each config calls it from its own check, so the Python
API and the CLI refuse a value the same way: one `ConfigError` line, `--lr 0.0: must be a positive number`).
`Options` turns the fields a command names into typer options, with the config's values as defaults, and builds the
config back from the parsed values; the command keeps only what is not a config field (arguments, output flags).

Hand-written because typer reads options from a function's parameters only: `Options.command` gives the command a
signature (`__signature__`, which typer reads through `inspect.signature`) made from the fields.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import inspect
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

from vivitcache.errors import ConfigError

KEY = "vivitcache.option"
"""The key of a field's `Opt` in its dataclass field metadata."""
NOT_GIVEN = object()
"""The default of an option whose value, when left out, a preset decides."""


@dataclass(frozen=True)
class Text:
    """How a field that is not one scalar is written on the command line (a comma list, `auto`)."""

    parse: Callable[[str], Any]
    show: Callable[[Any], str]


@dataclass(frozen=True)
class Opt:
    """A field's command-line option: help, flag (default: the field name with `-`), range, choices."""

    help: str
    flag: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    must: str | None = None
    """The range in words where the bounds alone would mislead (e.g. a 0 only records may hold)."""
    note: str = ""
    """Appended to the range message in parentheses (`0: off`)."""
    text: Text | None = None
    path: bool = False
    """Shown and parsed as a path (the field holds a str)."""
    required: bool = False
    auto_arg: bool = False
    """A flag that may be followed by the word `auto` (`--resume auto`): typer has no option with an optional
    value, so the `auto` is a hidden argument."""

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` (None: nothing)."""
        if self.choices and value not in self.choices:
            return f"use one of {', '.join(self.choices)}"
        bounds = [b for b in (self.ge, self.gt, self.le, self.lt) if b is not None]
        if not bounds or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        ok = (math.isfinite(value) and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
              and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        return None if ok else "must be " + (self.must or self._wanted()) + (f" ({self.note})" if self.note else "")

    def _wanted(self) -> str:
        low = f"[{_num(self.ge)}" if self.ge is not None else None if self.gt is None else f"({_num(self.gt)}"
        high = f"{_num(self.le)}]" if self.le is not None else None if self.lt is None else f"{_num(self.lt)})"
        if low and high:
            return f"in {low}, {high}"
        if self.ge is not None:
            return f"at least {_num(self.ge)}"
        if self.gt is not None:
            return "a positive number" if self.gt == 0 else f"more than {_num(self.gt)}"
        return f"at most {_num(self.le)}" if self.le is not None else f"less than {_num(self.lt)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def opt(help: str, **kw: Any) -> dict[str, Opt]:
    """Field metadata of an option: `field(default=4, metadata=opt("Patch grid side.", ge=1))`."""
    return {KEY: Opt(help, **kw)}


def valid(**kw: Any) -> dict[str, Opt]:
    """Field metadata of a range only, for a field no command has an option for (`metadata=valid(ge=0)`)."""
    return opt("", **kw)


def flag_of(f: dataclasses.Field) -> str:
    o = f.metadata.get(KEY)
    return (o.flag if o and o.flag else None) or f.name.replace("_", "-")


def check_fields(config: Any, error: type[Exception] = ConfigError) -> None:
    """`error` (one line: `--flag value: must be ...`) for the first field outside its declared range or choices."""
    for f in dataclasses.fields(config):
        o, value = f.metadata.get(KEY), getattr(config, f.name)
        if o is None or value is None:
            continue
        problem = o.problem(value)
        if problem:
            raise error(f"--{flag_of(f)} {value}: {problem}")


# ------------------------------------------------------------------------------------------- text conversions
def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in _split(text)] or [-1]
    except ValueError:
        raise ConfigError(f"{text!r}: give comma-separated integers, e.g. -1,-4,-7,-10") from None


def _auto_int(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{text!r}: give a number >= 1 or auto")
    return int(text)


COMMA_LIST = Text(parse=_split, show=",".join)
INT_LIST = Text(parse=_int_list, show=lambda v: ",".join(map(str, v)))
AUTO_INT = Text(parse=_auto_int, show=lambda v: "auto" if v is None else str(v))
NONE_WORD = Text(parse=str, show=lambda v: "none" if v is None else str(v))
"""A value whose None is written `none` (`--init none`)."""


# ------------------------------------------------------------------------------------------- typer options
@dataclass
class _Param:
    path: str  # dotted field path in the config (`optim.lr`)
    flag: str
    opt: Opt
    parameter: inspect.Parameter


def _field(cls: type, path: str) -> tuple[dataclasses.Field, type]:
    """The field at a dotted path of `cls`, and its type."""
    head, _, rest = path.partition(".")
    f = {f.name: f for f in dataclasses.fields(cls)}[head]
    kind = typing.get_type_hints(cls)[head]
    return _field(kind, rest) if rest else (f, kind)


def _value(base: Any, path: str) -> Any:
    for part in path.split("."):
        base = getattr(base, part)
    return base


class Options:
    """The typer options of a command, one per named field of a config; `base` gives the defaults."""

    def __init__(self, base: Any, paths: list[str | tuple[str, str | dict]]):
        """`paths`: dotted field paths (`optim.lr`), or (path, help) where a command needs its own words, or
        (path, {Opt field: value}) where it narrows more (`choices`)."""
        self.base = base
        self.params = [self._param(*((p, {}) if isinstance(p, str) else p)) for p in paths]

    def _param(self, path: str, change: str | dict) -> _Param:
        f, kind = _field(type(self.base), path)
        o: Opt = dataclasses.replace(f.metadata[KEY], **({"help": change} if isinstance(change, str) else change))
        flag, (default, helptext) = flag_of(f), self._default(path, o)
        given = default is not NOT_GIVEN
        default = default if given else None
        if type(None) in typing.get_args(kind):  # `int | None`
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        choice = enum.Enum(flag, {c: c for c in o.choices}, type=str) if o.choices else None
        if kind is bool or o.auto_arg:
            kind, default = bool, bool(default)
        elif o.text:
            kind, default = str, o.text.show(default) if given else None
        elif o.path:
            kind, default = Path, None if default is None else Path(default)
        elif choice:
            kind, default = choice, None if default is None else choice(default)
        if default is None:
            kind = Optional[kind]
        info = _typer_option(f"--{flag}", helptext)
        default = inspect.Parameter.empty if o.required else default
        parameter = inspect.Parameter(flag.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, default=default,
                                      annotation=Annotated[kind, info])
        return _Param(path, flag, o, parameter)

    def _default(self, path: str, o: Opt) -> tuple[Any, str]:
        """The option's default and help."""
        return _value(self.base, path), o.help

    def parameters(self) -> list[inspect.Parameter]:
        out = []
        for p in self.params:
            out.append(p.parameter)
            if p.opt.auto_arg:  # `--resume auto`: the word after the flag
                word = Annotated[Optional[str], _typer_argument(f"--{p.flag} auto")]
                out.append(inspect.Parameter(f"{p.parameter.name}_mode", inspect.Parameter.KEYWORD_ONLY, default=None,
                                             annotation=word))
        return out

    def build(self, parsed: dict[str, Any]) -> Any:
        """The config of parsed option values (keyed by parameter name); consumes them from `parsed`."""
        return _replace(copy.deepcopy(self.base), self._values(parsed))

    def _values(self, parsed: dict[str, Any]) -> dict[str, Any]:
        """Field path → value, from the parsed values of the options (consumed from `parsed`)."""
        values = {}
        for p in self.params:
            value = parsed.pop(p.parameter.name)
            if p.opt.auto_arg:
                value = _auto(p.flag, value, parsed.pop(f"{p.parameter.name}_mode"))
            elif isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            elif p.opt.text and value is not None:
                try:
                    value = p.opt.text.parse(value)
                except ConfigError as e:
                    raise ConfigError(f"--{p.flag} {e}") from None
            values[p.path] = value
        return values

    def command(self, fn: Callable) -> Callable:
        """`fn(cfg, **own)` as a typer command: `own` are fn's further (typer-annotated) parameters, then one option
        per field; typer calls it with parsed values, fn gets the config built from them."""
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]

        @functools.wraps(fn, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
        def command(**parsed):
            return fn(self.build(parsed), **parsed)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + self.parameters()
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command


class Presets(Options):
    """Options of a flat config made by `cls.preset(quick, **given)` (demo, bench): an option whose default the
    `--quick` preset changes is None when not given, and its help names both defaults. `quick` is one of the paths."""

    def __init__(self, cls: type, paths: list[str | tuple[str, str | dict]], **preset: Any):
        self.full, self.quick = cls.preset(False, **preset), cls.preset(True, **preset)
        super().__init__(self.full, paths)

    def _default(self, path: str, o: Opt) -> tuple[Any, str]:
        full, quick = _value(self.full, path), _value(self.quick, path)
        if path == "quick" or full == quick:
            return full, o.help
        return NOT_GIVEN, f"{o.help.rstrip('.')} (default {_shown(full, o)}; --quick: {_shown(quick, o)})."

    def build(self, parsed: dict[str, Any]) -> Any:
        values = self._values(parsed)
        return type(self.base).preset(values.pop("quick"), **values)


class Either(Options):
    """One command over two `Presets` picked by a flag (`bench`, `bench --recipes`): the options of both, each one's
    help naming its defaults in both; an option that only the config not picked has is refused."""

    def __init__(self, first: Presets, second: Presets, flag: str):
        self.first, self.second, self.flag = first, second, flag
        mine, theirs = ({p.parameter.name: p for p in o.params} for o in (first, second))
        self.params = [self._merged(mine.get(name), theirs.get(name)) for name in dict.fromkeys([*mine, *theirs])]

    def _merged(self, mine: _Param | None, theirs: _Param | None) -> _Param:
        p = mine or theirs
        if p.path == "quick":
            return p
        shown = [(label, _value(cfg, q.path)) for q, label, cfg in [
            (mine, "", self.first.full), (mine, "--quick", self.first.quick),
            (theirs, f"--{self.flag}", self.second.full), (theirs, f"--{self.flag} --quick", self.second.quick)] if q]
        kept = [(label, value) for i, (label, value) in enumerate(shown)
                if i == 0 or value != shown[i - 1 if label.endswith("--quick") else 0][1]]
        words = "; ".join(f"{label}: {_shown(value, p.opt)}" if i else f"default {_shown(value, p.opt)}"
                          for i, (label, value) in enumerate(kept))
        helptext = ("" if mine else f"--{self.flag}: ") + f"{p.opt.help.rstrip('.')} ({words})."
        kind = Optional[typing.get_args(p.parameter.annotation)[0]]  # left out: the picked preset's
        annotation = Annotated[kind, _typer_option(f"--{p.flag}", helptext)]
        return dataclasses.replace(p, parameter=p.parameter.replace(default=None, annotation=annotation))

    def build(self, parsed: dict[str, Any]) -> Any:
        second = parsed[self.flag]
        picked = self.second if second else self.first
        names = {p.parameter.name for p in picked.params}
        stray = [f"--{p.flag}" for p in self.params
                 if p.parameter.name not in names and parsed[p.parameter.name] is not None]
        if stray:
            raise ConfigError(f"{', '.join(stray)}: " + (f"not an option of --{self.flag}" if second
                                                         else f"only with --{self.flag}"))
        given = {p.parameter.name: parsed.pop(p.parameter.name) for p in self.params}
        return picked.build({name: value for name, value in given.items() if name in names})


def _shown(value: Any, o: Opt) -> str:
    return o.text.show(value) if o.text else "none" if value is None else str(value)


def _replace(config: Any, values: dict[str, Any]) -> Any:
    """`config` with the values of dotted field paths, nested configs rebuilt (so each checks itself again)."""
    top, nested = {}, {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, sub in nested.items():
        top[head] = _replace(getattr(config, head), sub)
    return dataclasses.replace(config, **top)


def _auto(flag: str, on: bool, word: str | None) -> bool | str:
    """`--resume` → True, `--resume auto` → "auto"; any other stray argument is an error."""
    if word is None:
        return on
    if word != "auto" or not on:
        raise ConfigError(f"unexpected argument {word!r} (the only value an option takes alone is `--{flag} auto`)")
    return "auto"


def _typer_option(flag: str, help: str):
    import typer

    return typer.Option(flag, help=help)


def _typer_argument(metavar: str):
    import typer

    return typer.Argument(hidden=True, metavar=metavar, show_default=False)
