"""User-facing errors: one clear message, exit code 2, no traceback.

Anything raised as a `UserError` is a mistake in what the user typed or provided; the CLI prints
its message and exits with `exit_code`. Anything else is a bug in dlrun and keeps its traceback.
"""

from __future__ import annotations

import difflib
import re


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


def describe_hydra_error(ex: BaseException, config_dir) -> str | None:
    """Turn Hydra's and OmegaConf's composition errors into one dlrun line, or None if unknown.

    Hydra already rejects unknown groups and options, misspelled keys and wrong types (the
    structured configs do that); this only rewords its messages as `key: what is allowed, what
    was given`.
    """
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    if isinstance(ex, MissingConfigException):
        match = re.search(r"Could not find '([^']+)/([^'/]*)'", str(ex))
        if match:
            group, name = match.groups()
            options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
            if options:
                return not_one_of(
                    group, _GROUP_WORDS.get(group, f"a {group} option"), name, options
                )
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
        return f"{key}: {str(cause).splitlines()[0]}"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = getattr(cause, "full_key", None) or "?"
        fields = _schema_fields(getattr(cause, "object_type", None))
        leaf = key.rsplit(".", 1)[-1]
        parent = key.rsplit(".", 1)[0] if "." in key else "the config"
        allowed = f" Known keys: {', '.join(fields)}." if fields else ""
        return f"{key} is not a setting of {parent}.{allowed}{did_you_mean(leaf, fields)}"
    if isinstance(cause, MissingMandatoryValue):
        key = getattr(cause, "full_key", None) or "?"
        return f"{key} is required and has no value."
    if isinstance(ex, ConfigCompositionException):
        return str(ex).splitlines()[0]
    if isinstance(cause, OmegaConfBaseException):
        return str(cause).splitlines()[0]
    return None


_GROUP_WORDS = {
    "model": "a model",
    "optim": "an optimizer",
    "sched": "a scheduler",
    "data": "a dataset",
    "trainer": "a trainer config",
}


def _schema_fields(object_type) -> list[str]:
    import dataclasses

    if object_type is None or not dataclasses.is_dataclass(object_type):
        return []
    return sorted(f.name for f in dataclasses.fields(object_type))
