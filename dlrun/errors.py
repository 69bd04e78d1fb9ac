"""User-facing errors: one clear message, exit code 2, no traceback.

Anything raised as a `UserError` is a mistake in what the user typed or provided; the CLI prints
its message and exits with `exit_code`. Anything else is a bug in dlrun and keeps its traceback.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import NoReturn


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""

    exit_code = 2


class ConfigError(UserError):
    """One or more problems in the config, all reported at once."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        lines = "\n".join(f"  {p}" for p in self.problems)
        return f"{len(self.problems)} problems in the config:\n{lines}"


class TrainingError(UserError):
    """Training cannot go on (a non-finite loss, say); the run folder keeps what was written."""

    exit_code = 1
    status = "failed"


class Diverged(TrainingError):
    """A NaN or infinite loss: the run stops; best.pt keeps the best epoch before it."""

    status = "diverged"


class Interrupted(UserError):
    """SIGINT or SIGTERM: the run stopped after its current step; it can be resumed."""

    status = "interrupted"

    def __init__(self, message: str, signum: int):
        import signal

        super().__init__(message)
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM
        self.signal = signal.Signals(signum).name


def regular_file(path, key: str, what: str):
    """`path` (a Path) if it is a regular file; else a UserError naming `key`. A FIFO, socket or
    device is refused before it is opened: reading one would wait, or never end."""
    import stat
    from pathlib import Path

    path = Path(path).expanduser()
    shown = path.absolute()
    if not path.exists():
        raise UserError(
            f"{key}: {shown} does not exist. Give the path of {what} "
            f"(a relative path starts from {Path.cwd()})."
        )
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise UserError(f"{key}: {shown} is a folder. Give the path of {what}.")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        )
        raise UserError(f"{key}: {shown} is not a regular file ({kind}). Give the path of {what}.")
    return path


def first_line(ex: BaseException) -> str:
    """An exception's first line, or its type's name when it has no message."""
    return (str(ex).strip().splitlines() or [type(ex).__name__])[0]


def unreadable(path, reason: str) -> UserError:
    """The error for a saved model that does not load, as `load_checkpoint` words it."""
    return UserError(f"checkpoint {path} cannot be read (truncated or corrupted?): {reason}")


def stdout_closed() -> NoReturn:
    """The reader of our output has gone (`dlrun --help | head -1`): exit quietly with 141
    (128 + SIGPIPE), as `ls`, `cat` or `git log` do. stdout is pointed at /dev/null first so that
    Python's flush at exit does not fail again (the recipe in Python's `signal` docs)."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(141)


def did_you_mean(word: str, options) -> str:
    """' Did you mean 'x'?' when one option is close to `word`, else ''."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def not_one_of(key: str, what: str, given, options) -> str:
    """The message for a name that is not among `options` (a model, an optimizer, a choice)."""
    options = sorted(str(o) for o in options)
    return f"{key}: '{given}' is not {what}. Choose one of: {', '.join(options)}." + did_you_mean(
        given, options
    )


_CONVERT = re.compile(
    r"Value '(?P<value>.*?)' (?:of type '\w+' )?could not be converted to (?P<type>\w+)"
)
_TYPE_WORDS = {"Integer": "an int", "Float": "a float", "Boolean": "a bool", "String": "a string"}


def describe_hydra_error(ex: BaseException, config_dir, argv=()) -> str | None:
    """Turn Hydra's and OmegaConf's composition errors into one dlrun line, or None if unknown.

    Hydra already rejects unknown groups and options, misspelled keys and wrong types (the
    structured configs do that); this only rewords its messages as `key: what is allowed, what
    was given`. `argv` (the command line, when there is one) lets an unknown option be reported
    with every other unknown option on the line, and a missing --config-dir as the user typed it.
    """
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
        SearchPathException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    bad_yaml = _yaml_problem(ex)
    if bad_yaml:
        return bad_yaml
    if isinstance(ex, SearchPathException) and "config directory" in str(ex):
        return _missing_config_dir(argv, config_dir)
    if isinstance(ex, MissingConfigException):
        match = re.search(r"Could not find '([^']+)/([^'/]*)'", str(ex))
        if match:
            user_dir = hydra_flag(argv, "-cd", "--config-dir")
            found = unknown_options(argv, config_dir, user_dir) + [match.groups()]
            problems = []
            for group, name in dict.fromkeys(found):  # in the order typed, each once
                options = set(group_options(group, config_dir, user_dir))
                if group == match[1]:  # Hydra's own list of its group, wherever it looked
                    options |= {o for o in ex.options or () if not o.endswith("_schema")}
                if options:
                    what = _GROUP_WORDS.get(group, f"a {group} option")
                    problems.append(not_one_of(group, what, name, options))
            if problems:
                return str(ConfigError(problems))
        return str(ex).split("\n")[0]
    if isinstance(ex, OverrideParseException):
        return f"cannot read the override: {str(ex).splitlines()[0]}"

    cause = ex.__cause__ if isinstance(ex, ConfigCompositionException) and ex.__cause__ else ex
    if isinstance(cause, ValidationError):
        key = getattr(cause, "full_key", None) or "?"
        converted = _CONVERT.search(cause.msg if hasattr(cause, "msg") else str(cause))
        if converted:
            kind = _TYPE_WORDS.get(converted["type"], converted["type"].lower())
            return f"{key} must be {kind}. Got '{converted['value']}'."
        if "is not Optional" in str(cause):
            return f"{key} cannot be null."
        return f"{key}: {str(cause).splitlines()[0]}"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = getattr(cause, "full_key", None) or "?"
        return not_a_setting(key, getattr(cause, "object_type", None))
    if isinstance(cause, MissingMandatoryValue):
        key = getattr(cause, "full_key", None) or "?"
        return f"{key} is required and has no value."
    if isinstance(ex, ConfigCompositionException):
        lines = str(ex).splitlines()
        if len(lines) > 1 and lines[0].endswith("raised while composing config:"):
            # "In 'model/x': ValidationError raised while composing config:" and the reason
            return f"{lines[0].split(':')[0]}: {lines[1]}"
        return lines[0]
    if isinstance(cause, OmegaConfBaseException):
        return str(cause).splitlines()[0]
    return None


def not_a_setting(key: str, object_type) -> str:
    """The message for a key that its node's schema (a dataclass) does not have."""
    fields = _schema_fields(object_type)
    leaf = key.rsplit(".", 1)[-1]
    parent = key.rsplit(".", 1)[0] if "." in key else "the config"
    allowed = f" Known keys: {', '.join(fields)}." if fields else ""
    return f"{key} is not a setting of {parent}.{allowed}{did_you_mean(leaf, fields)}"


def _yaml_problem(ex: BaseException) -> str | None:
    """'FILE: invalid YAML at line L, column C: what' for a YAML file that does not parse."""
    import yaml

    while ex is not None and not isinstance(ex, yaml.MarkedYAMLError):
        ex = ex.__cause__ or ex.__context__
    if ex is None:
        return None
    mark = ex.problem_mark or ex.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    started = ""
    if ex.context and ex.context_mark and ex.context_mark is not mark:
        at = f"line {ex.context_mark.line + 1}, column {ex.context_mark.column + 1}"
        started = f" ({ex.context} that starts at {at})"
    name = mark.name if mark else "a config file"
    return f"{name}: invalid YAML{where}: {ex.problem or ex.context}{started}."


def hydra_flag(argv, short: str, long: str) -> str | None:
    """The value of one of Hydra's flags (`-cd DIR`, `--config-dir DIR`, `--config-dir=DIR`)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg in (short, long) and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{long}="):
            return arg.split("=", 1)[1]
    return None


def _missing_config_dir(argv, config_dir) -> str:
    from pathlib import Path

    given = hydra_flag(argv, "-cd", "--config-dir") or "?"
    path = Path(given).expanduser()
    what = (
        f"'{given}' is a file, not a folder"
        if path.exists()
        else f"the folder '{given}' does not exist"
    )
    if path.is_absolute():
        return f"--config-dir: {what}. Give a folder of config files."
    beside = Path(config_dir).parent / given  # dlrun's own recipes/, say, in a source checkout
    hint = f" Did you mean {beside}?" if beside.is_dir() else ""
    return (
        f"--config-dir: {what} (looked up relative to the current directory, {Path.cwd()}).{hint}"
    )


_GROUP_OVERRIDE = re.compile(r"^[+~]{0,2}(?P<group>[A-Za-z_][\w/-]*)(?:@[\w.]*)?=(?P<value>.*)$")


def unknown_options(argv, config_dir, user_dir=None) -> list[tuple[str, str]]:
    """(group, option) for every `group=option` on the command line whose option is not in
    dlrun's config folder, the user's --config-dir or Hydra's plugins. A sweep's `a,b,c` is
    checked option by option."""
    found = []
    for arg in argv:
        match = _GROUP_OVERRIDE.match(arg)
        if not match:
            continue
        group, value = match["group"], match["value"]
        options = group_options(group, config_dir, user_dir)
        if not options or "(" in value or "[" in value:  # not a group, or a sweep function
            continue
        for name in value.split(","):
            if name.strip() not in options and name.strip() != "null":
                found.append((group, name.strip()))
    return found


@functools.cache
def group_options(group: str, config_dir, user_dir=None) -> tuple[str, ...]:
    """The options of a config group: Hydra's view of dlrun's configs and its plugins (the
    schemas stored beside the options are not choices), and the user's --config-dir."""
    from pathlib import Path

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        names = GlobalHydra.instance().config_loader().get_group_options(group)
    if user_dir is not None:
        names += [p.stem for p in (Path(user_dir) / group).glob("*.yaml")]
    return tuple(sorted({n for n in names if not n.endswith("_schema")}))


_GROUP_WORDS = {
    "model": "a model",
    "optim": "an optimizer",
    "sched": "a scheduler",
    "data": "a dataset",
    "trainer": "a trainer config",
    "logger": "a logger",
    "hparams_search": "a search",
    "hydra/launcher": "a launcher",
    "hydra/sweeper": "a sweeper",
}


def _schema_fields(object_type) -> list[str]:
    import dataclasses

    if object_type is None or not dataclasses.is_dataclass(object_type):
        return []
    return sorted(f.name for f in dataclasses.fields(object_type))


def install_hint(extra: str) -> str:
    """The command that installs dlrun's optional `extra` into the Python that runs dlrun now
    (its packages by name: `pip install 'dlrun[extra]'` works only where dlrun is on an index,
    not from a checkout)."""
    import shlex
    import sys
    from importlib.metadata import PackageNotFoundError, requires

    try:
        needs = requires("dlrun") or []
    except PackageNotFoundError:
        needs = []
    packages = [
        r.split(";")[0].strip() for r in needs if f'extra == "{extra}"' in r.replace("'", '"')
    ]
    listed = " ".join(shlex.quote(p.replace(" ", "")) for p in packages) or shlex.quote(
        f".[{extra}]"
    )
    return f"{shlex.quote(sys.executable)} -m pip install {listed}"
