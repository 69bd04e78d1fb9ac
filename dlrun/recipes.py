"""Run the recipes in recipes/ and check each against the result its header promises.

A recipe is a primary config whose header says how to run it and what it reaches:

    # run: dlrun -m -cd recipes -cn optimizers        the command, from the repository root
    # shrink: trainer.max_epochs=1                    overrides for a quick smoke run (tests)
    # needs: data/mnist/MNIST/raw (how to get it)     a file or folder it cannot run without
    #                                                  (optional, one line each)
    # before: pretrain dlrun model=autoencoder         a run made first (optional, in order):
    #                                                  the run and expect lines name its folder
    #                                                  {pretrain}
    # expect: optim=adam test.accuracy >= 0.95        [job override] summary key, op, value
    # expect: test.recon_mse < 0.5*test.noisy_mse      ... or [factor*]another key of the job
    # expect: test.recon_mse < pca(16)                 ... or a baseline on the job's own split
    # expect: mean:model=mlp test.accuracy >= 0.9      the mean over the jobs it picks (seeds)
    # expect: model=mlp&optim=sgd test.accuracy > 0.9  a job picked by several overrides

The baseline `pca(K)`: the test reconstruction error (mean squared, per input value, in the
input's own scale) of PCA with K components fitted on the job's training split.

`python -m dlrun.recipes [NAME ...]` (`make recipes`) runs them in full and checks every
expectation; a recipe whose `needs` file or folder is missing is reported as skipped, with its
path. In a path, `{torch_hub}` is torch.hub's folder, where torchvision keeps its weights (in
checkpoints/, named as in their URLs).
"""

from __future__ import annotations

import json
import operator
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclass
class Expect:
    job: str | None  # an override that picks the sweep job ("model=lstm"); None: the only run
    key: str  # dotted path into summary.json
    op: str
    value: float | str  # a number, [factor*]a key of the same summary, or a baseline: pca(16)

    def __str__(self) -> str:
        value = f"{self.value:g}" if isinstance(self.value, float) else self.value
        return f"{self.job + ' ' if self.job else ''}{self.key} {self.op} {value}"

    def bound(self, summary: dict) -> float:
        """The right-hand side for one job's summary."""
        if isinstance(self.value, float):
            return self.value
        baseline = re.fullmatch(r"pca\((\d+)\)", self.value)
        if baseline:
            return pca_baseline(Path(summary["run_dir"]), int(baseline[1]))
        factor, _, key = self.value.rpartition("*")
        return (float(factor) if factor else 1.0) * lookup(summary, key)


def lookup(summary: dict, key: str) -> float:
    value = summary
    for part in key.split("."):
        value = value[part]
    return float(value)


def pca_baseline(run_dir: Path, components: int) -> float:
    """Test reconstruction error of PCA (`components`) fitted on the run's training split, per
    input value in the input's own scale (image pixels in [0, 1]): what an autoencoder with a
    latent of that size should beat."""
    from sklearn.decomposition import PCA

    from dlrun.catalog import load_catalog
    from dlrun.data import build_data
    from dlrun.use import compose_from_run
    from dlrun.validate import validate

    load_catalog()
    data = build_data(validate(compose_from_run(run_dir, [])).data)
    raw = {}
    for split in ("train", "test"):
        x, _ = data.split(split)
        if data.norm is not None:
            x = x * data.norm[1] + data.norm[0]  # back to the input's own scale
        raw[split] = x.reshape(len(x), -1)
    pca = PCA(components, random_state=0).fit(raw["train"])
    rebuilt = pca.inverse_transform(pca.transform(raw["test"]))
    return float(((rebuilt - raw["test"]) ** 2).mean())


@dataclass
class Recipe:
    name: str
    path: Path
    args: list[str]  # after `dlrun`
    shrink: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)  # paths, each with how to get it
    expects: list[Expect] = field(default_factory=list)
    before: list[tuple[str, list[str]]] = field(default_factory=list)  # (name, args after dlrun)

    @property
    def multirun(self) -> bool:
        return "-m" in self.args or "--multirun" in self.args

    def missing(self) -> str | None:
        """The first file or folder the recipe needs that is not there, or None."""
        for need in self.needs:
            path = need.split()[0]  # the rest of the line says how to get it
            if "{torch_hub}" in path:
                import torch

                path = path.replace("{torch_hub}", torch.hub.get_dir())
            if not Path(path).expanduser().exists():
                return path
        return None


def parse(path: Path) -> Recipe:
    head = {"run": [], "shrink": [], "needs": [], "expect": [], "before": []}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line.lstrip("# ").partition(":")
        if key in head and value.strip():
            head[key].append(value.strip())
    if len(head["run"]) != 1 or not head["run"][0].startswith("dlrun "):
        raise ValueError(f"{path}: the header needs one '# run: dlrun ...' line")
    expects = []
    for text in head["expect"]:
        words = text.split()
        job = words.pop(0) if len(words) == 4 else None
        key, op, value = words
        try:
            expects.append(Expect(job, key, op, float(value)))
        except ValueError:  # another key of the summary, or a baseline
            expects.append(Expect(job, key, op, value))
    args = shlex.split(head["run"][0])[1:]
    before = []
    for text in head["before"]:
        name, *command = shlex.split(text)
        if not command or command[0] != "dlrun":
            raise ValueError(f"{path}: '# before: {text}' is not 'NAME dlrun ...'")
        before.append((name, command[1:]))
    return Recipe(
        path.stem,
        path,
        args,
        shlex.split(" ".join(head["shrink"])),
        head["needs"],
        expects,
        before,
    )


def run(
    recipe: Recipe,
    out_dir: Path,
    *,
    shrink: bool = False,
    extra: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> list[tuple[list[str], dict]]:
    """Run the recipe's command into out_dir (its `before` runs first, each into a folder
    beside it); return (overrides, summary) for each job."""
    folders = {}
    for name, args in recipe.before:
        folders[name] = out_dir.with_name(f"{out_dir.name}-{name}")
        _dlrun(recipe, args, False, folders[name], shrink, extra, cwd, folders)
    _dlrun(recipe, recipe.args, recipe.multirun, out_dir, shrink, extra, cwd, folders)
    jobs = sorted(out_dir.glob("*/summary.json")) if recipe.multirun else [out_dir / "summary.json"]
    results = []
    for summary in jobs:
        overrides = yaml.safe_load((summary.parent / ".hydra" / "overrides.yaml").read_text()) or []
        for name, folder in folders.items():  # as the header writes them: {name}
            overrides = [o.replace(str(folder.resolve()), f"{{{name}}}") for o in overrides]
        results.append((overrides, json.loads(summary.read_text())))
    return results


def _dlrun(recipe, args, multirun, out_dir, shrink, extra, cwd, folders) -> None:
    for name, folder in folders.items():  # {name}: the folder of that earlier run
        args = [a.replace(f"{{{name}}}", str(folder.resolve())) for a in args]
    if "-cd" in args:  # the recipes folder, wherever the command runs from
        args[args.index("-cd") + 1] = str(recipe.path.parent.resolve())
    where = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    command = [
        str(Path(sys.executable).with_name("dlrun")),
        *args,
        *(recipe.shrink if shrink else []),
        *extra,
        f"{where}={out_dir}",
    ]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{recipe.name}: exit code {done.returncode}\n{done.stderr[-3000:]}")


def check(
    recipe: Recipe, results: list[tuple[list[str], dict]]
) -> list[tuple[Expect, float | None, bool]]:
    """Each expectation with the value found and whether it holds."""
    checked = []
    for expect in recipe.expects:
        job, mean = expect.job, bool(expect.job and expect.job.startswith("mean:"))
        job = job[len("mean:") :] if mean else job
        wanted = [] if job is None else job.split("&")  # every one of these overrides
        picked = [s for overrides, s in results if all(w in overrides for w in wanted)]
        if len(picked) != 1 and not (mean and picked):
            checked.append((expect, None, False))
            continue
        value = float(np.mean([lookup(s, expect.key) for s in picked]))
        checked.append((expect, value, OPS[expect.op](value, expect.bound(picked[0]))))
    return checked


def recipe_dir() -> Path:
    """recipes/ ships inside the wheel as dlrun/recipe_configs; in a source checkout it sits
    beside the package (as configs/ does)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "recipe_configs", here.parent / "recipes"):
        if any(candidate.glob("*.yaml")):
            return candidate
    raise FileNotFoundError(f"dlrun's recipes are missing (looked in {here} and {here.parent})")


def main_recipe(argv: list[str] | None = None) -> None:
    """`dlrun-recipe NAME [overrides]`: run a recipe from any directory, as its header's command
    would from the repository root (its `before` runs first, under outputs/recipes/); with no
    NAME, list the recipes. Runs go to outputs/ of the current directory, as any dlrun run."""
    args = sys.argv[1:] if argv is None else argv
    folder = recipe_dir()
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    if not args or args[0] in ("-h", "--help", "--list"):
        usage = (
            "usage: dlrun-recipe NAME [key=value ...]   (runs the recipe; its runs go to outputs/)"
        )
        try:
            print(usage + "\nrecipes:")
            for name in names:
                title = (folder / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
                print(f"  {name:<28} {title}")
            sys.stdout.flush()
        except BrokenPipeError:  # dlrun-recipe | head -3
            from dlrun.errors import stdout_closed

            stdout_closed()
        sys.exit(0 if args else 2)
    name, extra = args[0], args[1:]
    if name not in names:
        from dlrun.errors import did_you_mean

        print(
            f"dlrun-recipe: '{name}' is not a recipe. Recipes: {', '.join(names)}."
            + did_you_mean(name, names),
            file=sys.stderr,
        )
        sys.exit(2)
    recipe = parse(folder / f"{name}.yaml")
    missing = recipe.missing()
    if missing:
        print(f"dlrun-recipe: {name} needs {missing}, which is not there.", file=sys.stderr)
        sys.exit(2)
    dlrun = str(Path(sys.executable).with_name("dlrun"))
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folders = {}
    for before, before_args in recipe.before:  # e.g. the run a transfer recipe starts from
        folders[before] = (Path("outputs") / "recipes" / stamp / f"{name}-{before}").absolute()
        print(f"dlrun-recipe: {name} first runs {before}", flush=True)
        step = [dlrun, *before_args, *extra, f"hydra.run.dir={folders[before]}"]
        if subprocess.run(step).returncode != 0:
            sys.exit(1)
    command = list(recipe.args)
    for before, path in folders.items():
        command = [a.replace(f"{{{before}}}", str(path)) for a in command]
    command[command.index("-cd") + 1] = str(folder)
    print(f"dlrun-recipe: dlrun {' '.join(command + extra)}", flush=True)
    sys.exit(subprocess.run([dlrun, *command, *extra]).returncode)


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    names = sys.argv[1:] if argv is None else argv
    folder = Path("recipes")
    paths = [folder / f"{n}.yaml" for n in names] if names else sorted(folder.glob("*.yaml"))
    table = Table(title="recipes")
    for column in ("recipe", "expectation", "found", "result"):
        table.add_column(column)
    failed = 0
    root = Path("outputs") / "recipes" / time.strftime("%Y-%m-%d_%H-%M-%S")  # a new one each time
    for path in paths:
        recipe = parse(path)
        missing = recipe.missing()
        if missing:
            table.add_row(recipe.name, "", "", f"skipped: {missing} is missing")
            continue
        print(f"running {recipe.name}: dlrun {' '.join(recipe.args)}", flush=True)
        try:
            results = run(recipe, root / recipe.name)
        except RuntimeError as ex:
            failed += 1
            table.add_row(recipe.name, "", "", f"[red]failed: {str(ex).splitlines()[0]}")
            continue
        for expect, found, ok in check(recipe, results):
            failed += not ok
            table.add_row(
                recipe.name,
                str(expect),
                "-" if found is None else f"{found:.4g}",
                "ok" if ok else "[red]NOT MET",
            )
    Console().print(table)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
