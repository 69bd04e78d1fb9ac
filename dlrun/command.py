"""The `dlrun` command's entry point, kept light: `dlrun --help` reads the config folder and
returns without importing Hydra, numpy or torch; everything else goes to `dlrun.cli.main`."""

from __future__ import annotations

import sys
from pathlib import Path


def find_config_dir() -> Path:
    """configs/ ships inside the wheel as dlrun/configs; in a source checkout it sits beside
    the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"dlrun's configs/ folder is missing (looked in {here} and {here.parent})"
    )


def config_groups(config_dir: Path, width: int = 100) -> str:
    """'group (default D): option, option' per group, for `dlrun --help` (the schemas stored
    beside the options are not choices, so Hydra's own list is not used), wrapped at `width`
    with the options indented. The defaults come from train.yaml's defaults list, read as text:
    no YAML parser to import."""
    import re
    import textwrap

    chosen = dict(
        re.findall(r"^\s*-\s*([a-z_]+):\s*([\w-]+)", (config_dir / "train.yaml").read_text(), re.M)
    )
    lines = []
    for group in sorted(p for p in config_dir.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        default = chosen.get(group.name, "null")
        line = f"{group.name} (default {'none' if default == 'null' else default}): "
        line += ", ".join(options)
        lines += textwrap.wrap(line, width, subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)


def settings(config_dir: Path, width: int = 100) -> str:
    """'key=default   what it does' for the top-level settings and the trainer's, from the
    YAML files' own lines and comments (read as text: no YAML parser to import)."""
    import re

    lines = []
    for prefix, path in (("", "train.yaml"), ("trainer.", "trainer/default.yaml")):
        parents: list[tuple[int, str]] = []
        for line in (config_dir / path).read_text().splitlines():
            found = re.match(r"^( *)([a-z_]+):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
            if not found or found[2] in ("defaults", "hydra") or line.startswith((" -", "-")):
                continue
            indent, key, value, comment = len(found[1]), found[2], found[3], found[4] or ""
            parents = [(i, k) for i, k in parents if i < indent]
            if prefix == "" and indent:  # the hydra: block's own keys
                continue
            if not value:  # a block: its keys follow, indented
                parents.append((indent, key))
                continue
            name = prefix + ".".join([k for _, k in parents] + [key])
            text = f"  {name}={value.strip(chr(34))}"
            text = f"{text:<42} {comment}" if comment else text
            lines.append(text if len(text) <= width else text[: width - 3] + "...")
    return "\n".join(lines)


HELP = """dlrun: train and compare models declared in YAML (Hydra config groups).

Usage:  dlrun [group=option ...] [key=value ...]
        dlrun -m key=a,b,c ...        (multirun: one job per combination, one leaderboard)

== Config groups (group=option) ==
{groups}

== Settings (key=default; a group's own keys: dlrun GROUP=OPTION --cfg job) ==
{settings}

== Examples ==
  dlrun                                  the default: an MLP on the bundled digits
  dlrun model=lenet5 optim=adam          swap config groups
  dlrun trainer.clip.max_norm=1.0 optim.lr=3e-3 trainer.max_epochs=50
  dlrun -m optim=sgd,momentum,adam       a sweep
  dlrun -m hparams_search=mlp_optuna     an Optuna search
  dlrun trainer.resume=auto              continue the latest interrupted run

  dlrun --cfg job [overrides]            print the whole composed config
  dlrun-eval / dlrun-predict / dlrun-export run_dir=PATH   use a trained run

Runs are written to outputs/<task_name>/<date>/<time>/. Hydra's own flags: dlrun --hydra-help
"""


def completions(line: str, config_dir: Path) -> list[str] | None:
    """Tab completion without Hydra for what is typed most: a config group's options
    (`data=pa`) and the first part of a word (groups and top-level keys). None for the rest (a
    key inside a group, which needs the composed config: Hydra answers). The schemas stored
    beside the options are not offered: they are not choices."""
    import re

    words = line.split()
    word = "" if line.endswith(" ") or len(words) < 2 else words[-1]
    groups = {
        p.name: sorted(f.stem for f in p.glob("*.yaml"))
        for p in config_dir.iterdir()
        if p.is_dir() and p.name != "hydra"
    }
    if "=" in word:
        key, _, typed = word.partition("=")
        if key.lstrip("+~") not in groups:
            return None
        return [
            f"{key}={option}" for option in groups[key.lstrip("+~")] if option.startswith(typed)
        ]
    if "." in word:
        return None
    text = (config_dir / "train.yaml").read_text()
    chosen = dict(re.findall(r"^\s*-\s*([a-z_]+):\s*([\w-]+)", text, re.M))
    keys = [k for k in re.findall(r"^([a-z_]+):", text, re.M) if k not in ("defaults", "hydra")]
    found = []
    for group in sorted(groups):
        if chosen.get(group, "null") != "null":
            found.append(f"{group}.")
        found.append(f"{group}=")
    found += [f"{key}=" for key in sorted(keys) if key not in groups] + ["hydra."]
    return [w for w in found if w.startswith(word)]


def complete() -> None:
    """`dlrun -sc query=bash` (what Hydra's bash completion runs at each TAB): answered here when
    it can be (`completions`), else by Hydra with the schemas left out."""
    import io
    import os
    from contextlib import redirect_stdout

    line = os.environ.get("COMP_LINE", "")
    found = completions(line, find_config_dir())
    if found is None:
        from dlrun.cli import main as run

        captured = io.StringIO()
        with redirect_stdout(captured):
            try:
                run()
            except SystemExit:
                pass
        found = [w for w in captured.getvalue().split() if not w.endswith("_schema")]
    print(" ".join(found))


def main() -> None:
    if sys.argv[1:] in (["-sc", "query=bash"], ["--shell-completion", "query=bash"]):
        complete()
        return
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        # Our own help: Hydra's lists every option of every group by composing each one, which
        # takes seconds; this reads the folder names and returns at once.
        try:
            folder = find_config_dir()
            print(HELP.format(groups=config_groups(folder), settings=settings(folder)))
            sys.stdout.flush()
        except BrokenPipeError:  # dlrun --help | head -1
            from dlrun.errors import stdout_closed

            stdout_closed()
        return
    from dlrun.cli import main as run

    run()
