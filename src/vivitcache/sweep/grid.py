"""Which configs a sweep trains: `train` options that take several values, and an optional TOML grid file.

On the command line every `train` option may take a comma list (`--lr 3e-4,1e-3 --temporal-depth 2,4`): the configs
are the product of the lists. Options whose one value is itself a comma list (`--init-parts adapter,temporal`) are
not split; give their alternatives in a grid file. A grid file (`--grid sweep.toml`) holds a `[grid]` table (a list
value: alternatives, multiplied out) and/or `[[config]]` tables (each one config); keys are `train` option names,
with `_` or `-`. Its configs are multiplied with the command line's.

The result is, per config, a `train` argument list and a name made of what varies (its run folder's name).
"""

from __future__ import annotations

import itertools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from vivitcache.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, backported
    import tomli as tomllib

NOT_SPLIT = frozenset({"--init-parts"})
"""Options whose single value is a comma list: never split into alternatives on the command line."""
OWN_OPTIONS = frozenset({"--out", "--resume", "--overwrite"})
"""`train` options the sweep sets for each config itself."""


@dataclass(frozen=True)
class OptionKinds:
    """What the `train` command accepts: option spelling → whether it is a flag (takes no value)."""

    flags: frozenset[str]
    valued: frozenset[str]

    def check(self, option: str) -> None:
        if option in OWN_OPTIONS:
            raise ConfigError(f"{option}: a sweep sets it for every config (give it to `sweep`, before the train options)")
        if option not in self.flags and option not in self.valued:
            raise ConfigError(f"{option}: not an option of `vivitcache train` (see vivitcache train --help)")


@dataclass(frozen=True)
class ConfigArgs:
    """One config of a sweep: its name and its `train` arguments (without --out/--resume/--overwrite)."""

    name: str
    args: tuple[str, ...]
    varying: tuple[tuple[str, str], ...]
    """(option, value) of the options whose value differs between the sweep's configs."""


Choice = tuple[tuple[str, "str | None"], ...]
"""One config's options in order: (option, value), value None for a flag that is on."""


def _cli_alternatives(args: list[str], kinds: OptionKinds) -> list[list[Choice]]:
    """Per command-line option, its alternatives (each a one-option Choice)."""
    out, i = [], 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r} (train options start with --)")
        option, _, inline = token.partition("=")
        kinds.check(option)
        if option in kinds.flags:
            out.append([((option, None),)])
            i += 1
            continue
        if not inline and i + 1 >= len(args):
            raise ConfigError(f"{option}: needs a value")
        value = inline or args[i + 1]
        i += 1 if inline else 2
        values = [value] if option in NOT_SPLIT else [v.strip() for v in value.split(",")]
        if any(not v for v in values):
            raise ConfigError(f"{option} {value!r}: an empty value in the list")
        out.append([((option, v),) for v in values])
    return out


def _toml_value(option: str, value, kinds: OptionKinds) -> tuple[tuple[str, str | None], ...]:
    """A grid file's value as options: a flag true → on, false → left out; a list of a NOT_SPLIT option joined."""
    if option in kinds.flags:
        if not isinstance(value, bool):
            raise ConfigError(f"{option}: a flag, give true or false (got {value!r})")
        return ((option, None),) if value else ()
    if isinstance(value, bool) or isinstance(value, (dict, list)) and not (option in NOT_SPLIT and isinstance(value, list)):
        raise ConfigError(f"{option}: give a number or a string (got {value!r})")
    return ((option, ",".join(map(str, value)) if isinstance(value, list) else str(value)),)


def _file_configs(path: Path, kinds: OptionKinds) -> list[Choice]:
    """The configs of a grid file: [[config]] tables, or the [grid] product, or [[config]] × [grid]."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--grid {path}: {e}") from None
    unknown = sorted(set(data) - {"grid", "config"})
    if unknown:
        raise ConfigError(f"--grid {path}: unknown table(s) {unknown}: use [grid] and/or [[config]]")
    option = lambda key: "--" + key.replace("_", "-")  # noqa: E731
    grid = []
    for key, value in data.get("grid", {}).items():
        kinds.check(option(key))
        choices = value if isinstance(value, list) and not (option(key) in NOT_SPLIT and value and
                                                           not isinstance(value[0], list)) else [value]
        if not choices:
            raise ConfigError(f"--grid {path}: [grid] {key} is an empty list")
        grid.append([_toml_value(option(key), v, kinds) for v in choices])
    listed = data.get("config", [{}])
    if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
        raise ConfigError(f"--grid {path}: write each config as a [[config]] table")
    configs = []
    for table in listed:
        for key in table:
            kinds.check(option(key))
        own = tuple(pair for key, value in table.items() for pair in _toml_value(option(key), value, kinds))
        configs += [own + tuple(pair for part in combo for pair in part) for combo in itertools.product(*grid)]
    return configs


def _name(index: int, varying: list[tuple[str, str | None]]) -> str:
    """`c03-lr0.001-temporal-depth2`: index, then what varies, safe as a folder name."""
    parts = [option[2:] + ("" if value is None else value) for option, value in varying]
    text = re.sub(r"[^A-Za-z0-9.=_+-]+", "-", "-".join(parts))[:80].strip("-")
    return f"c{index:02d}" + (f"-{text}" if text else "")


def expand(args: list[str], grid_file: Path | None, kinds: OptionKinds) -> list[ConfigArgs]:
    """Every config of a sweep, in a fixed order (the command line's lists vary slowest, then the file's)."""
    cli = [tuple(pair for part in combo for pair in part) for combo in itertools.product(*_cli_alternatives(args, kinds))]
    listed = _file_configs(grid_file, kinds) if grid_file is not None else [()]
    configs = [a + b for a in cli for b in listed]
    for config in configs:
        twice = sorted({o for o, _ in config if sum(o == p for p, _ in config) > 1})
        if twice:
            raise ConfigError(f"{', '.join(twice)}: given twice (on the command line and in the grid file?)")
    # an option whose (value or absence) differs between configs is part of each one's name
    options = list(dict.fromkeys(option for config in configs for option, _ in config))
    as_dicts = [dict(config) for config in configs]
    varying = [o for o in options if len({(o in d, d.get(o)) for d in as_dicts}) > 1]
    if len(set(configs)) < len(configs):
        raise ConfigError("the grid lists the same config twice")
    out = []
    for i, (config, d) in enumerate(zip(configs, as_dicts)):
        argv = tuple(token for option, value in config for token in ((option,) if value is None else (option, value)))
        shown = [(o, d[o]) for o in varying if o in d]
        out.append(ConfigArgs(_name(i, shown), argv, tuple((o, "" if v is None else v) for o, v in shown)))
    return out
