"""Use a trained run: evaluate it again, predict new samples, export the network.

    dlrun-eval run_dir=PATH [out_dir=PATH] [data.path=... or data.root=... if the data moved]
    dlrun-predict run_dir=PATH input=FILE [output=FILE.csv] [overwrite=true]
    dlrun-export run_dir=PATH [format=onnx|torchscript] [output=FILE] [overwrite=true]

Each reloads the run's resolved config (config.yaml, never resolving anything in it) and its best
model (checkpoints/best.pt, or the estimator's model file) and rebuilds the data exactly as
training did (same split, same statistics from the training split). Nothing the run wrote is
changed: evaluation goes to a new folder, predictions and exports to new files (predictions/ and
export/ by default), an existing file is replaced only with overwrite=true, and an input never.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from dlrun.errors import UserError, install_hint

GROUPS = ("model", "optim", "sched", "data", "logger")


def compose_from_run(run_dir: Path, overrides: list[str]):
    """The run's config (typed), with `overrides` applied as on the dlrun command line."""
    from hydra import compose, initialize_config_dir

    from dlrun.catalog import load_catalog
    from dlrun.cli import CONFIG_DIR

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"run_dir: {run_dir} is not a dlrun run folder (it has no config.yaml).")
    saved = load_saved_config(path)
    switched = {o.split("=", 1)[0] for o in overrides if "." not in o.split("=", 1)[0]}
    choices = [f"{g}={saved[g].name}" for g in GROUPS if g in saved and g not in switched]
    load_catalog()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=choices + list(overrides))
    kept = {k: v for k, v in saved.items() if k not in switched}
    cfg = OmegaConf.merge(cfg, kept)
    values = [o for o in overrides if "." in o.split("=", 1)[0]]
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(values)) if values else cfg


def load_saved_config(path: Path):
    """A run's config.yaml, refused if it holds an interpolation (`${oc.env:SECRET}`, say): dlrun
    writes it fully resolved, so one there was put in by hand, and resolving it could read the
    environment or run a resolver of whoever evaluates the run."""
    import yaml

    try:
        saved = OmegaConf.load(path)
    except (yaml.YAMLError, ValueError) as ex:
        reason = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        raise UserError(f"{path} cannot be read as a run's config: {reason}") from None
    found = interpolations(saved)
    if found:
        key, value = found[0]
        raise UserError(
            f"{path}: {key} holds '{value}', an interpolation. A run's config.yaml is written fully "
            "resolved, so this one was edited after the run; dlrun does not resolve it (it could "
            "read environment variables). Put the value itself there."
        )
    return saved


def interpolations(node, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, text) of every interpolation in a config, without resolving any."""
    from omegaconf import DictConfig, ListConfig

    found = []
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        name = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{key}]"
        child = node._get_node(key)
        text = str(child._value())
        if OmegaConf.is_interpolation(node, key) and re.search(r"(?<!\\)\$\{", text):
            found.append((name, text))  # an escaped \${...} is plain text: not listed
            continue
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none():
            found += interpolations(child, f"{name}.")
    return found


class Trained:
    """A run's best model, ready to predict: from the run folder alone (its saved
    preprocessing), or with `with_data` also its data read again (dlrun-eval), which must be
    the data it trained on."""

    def __init__(self, run_dir: Path, overrides: list[str] = (), with_data: bool = False):
        from dlrun.runner import check_unchanged, prepare, prepare_saved, saved_preprocessing
        from dlrun.validate import validate

        self.run_dir = Path(run_dir)
        self.cfg = compose_from_run(self.run_dir, list(overrides))
        self.conf = validate(self.cfg)
        if with_data:  # the data read again, prepared by what the run saved (if it did)
            self.prep = prepare(self.conf, saved_preprocessing(self.run_dir))
            check_unchanged(self.run_dir, self.prep, self.conf)
        else:
            self.prep = prepare_saved(self.conf, self.run_dir)
        # what prepares new samples (dlrun.data.preprocess.Preprocessing), saved or refitted
        self.data = getattr(self.prep.data, "preprocessing", self.prep.data)
        entry, spec, conf = self.prep.entry, self.prep.spec, self.conf
        ckpt_dir = self.run_dir / "checkpoints"
        if entry.family == "torch":
            from dlrun.checkpoints import load_checkpoint
            from dlrun.runner import build_network

            self.model = build_network(self.prep, conf)  # as training built it; weights below
            state = load_checkpoint(ckpt_dir / "best.pt")
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as ex:
                raise UserError(
                    f"{ckpt_dir / 'best.pt'} does not fit the model of this config: "
                    f"{str(ex).splitlines()[0]}"
                ) from None
            self.model.to(self.prep.device).eval()
        else:
            self.model = entry.build(
                conf.model,
                spec,
                seed=conf.seed,
                device=self.prep.device,
                patience=conf.trainer.early_stopping.patience,
            )
            self.model.load(ckpt_dir)

    def scores(self) -> dict[str, dict[str, float]]:
        """The validation and test metrics, measured as training measured them."""
        from dlrun.runner import score

        objective = None
        if self.prep.entry.family == "torch":
            from dlrun.objectives import objective_for

            objective = objective_for(
                self.conf, self.prep, self.prep.device, self.run_dir, write=False
            )
        return score(self.prep, self.model, objective, self.conf)[0]

    def outputs(self, x: np.ndarray, lengths=None) -> np.ndarray:
        """Class probabilities (N, K) or predictions (N, T); for an autoencoder, the latent
        (N, latent_size) and each sample's reconstruction error (its last column). `lengths`:
        the valid steps of padded sequences."""
        if self.prep.entry.family != "torch":
            return self.model.predict(x)
        if self.prep.entry.objective != "supervised":
            return self.codes(x)
        import torch

        from dlrun.training import predict

        device = self.prep.device
        tensor = torch.as_tensor(x, device=device)
        if lengths is not None:
            lengths = torch.as_tensor(np.asarray(lengths, dtype=np.int64), device=device)
        return predict(
            self.model, tensor, self.prep.spec.task, self.conf.trainer.precision, lengths=lengths
        )

    def generator(self):
        """dlrun.nn.Generated: latent vectors -> samples in the data's own scale."""
        from dlrun.nn import Generated
        from dlrun.objectives.reconstruction import Scale

        data, spec = self.data, self.prep.spec
        scale = Scale(data.norm, data.spec.shape, spec.shape, "cpu")
        return Generated(self.model, scale.mean, scale.std).to(self.prep.device).eval()

    def codes(self, x: np.ndarray) -> np.ndarray:
        import torch

        from dlrun.objectives import objective_for

        objective = objective_for(self.conf, self.prep, self.prep.device)
        tensor = torch.as_tensor(x, device=self.prep.device)
        z = objective.latent(self.model, tensor)  # (N, latent_size)
        given, recon = objective.reconstruct(self.model, tensor)  # in the input's own scale
        error = (given - recon).pow(2).flatten(1).mean(1, keepdim=True)
        return torch.cat([z, error], dim=1).double().cpu().numpy()


# What dlrun-eval may set: where the run's data and model are read and run, never which rows
# are scored (a changed split would score rows the model trained on).
EVAL_MAY_SET = ("data.path", "data.root", "data.storage", "trainer.device", "trainer.precision")


def check_eval_overrides(overrides: list[str]) -> None:
    from dlrun.errors import ConfigError

    problems = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key not in EVAL_MAY_SET:
            problems.append(
                f"{key}: dlrun-eval scores the run's own validation and test rows with its own "
                f"model, so it cannot change {key} (a changed split would score rows the model "
                f"trained on). It may set: {', '.join(EVAL_MAY_SET)}. To score other samples, "
                "use dlrun-predict."
            )
    if problems:
        raise ConfigError(problems)


def evaluate(run_dir: Path, overrides: list[str], out_dir: Path) -> dict:
    """Recompute val and test metrics of a run's best model; write them to out_dir (a new or
    empty folder)."""
    from dlrun import folders
    from dlrun.checkpoints import atomic_write, write_json

    check_eval_overrides(overrides)
    trained = Trained(run_dir, overrides, with_data=True)
    scores = trained.scores()
    folders.claim_run(out_dir, "out_dir")
    try:
        text = OmegaConf.to_yaml(trained.cfg, resolve=True)
        atomic_write(out_dir / "config.yaml", lambda f: f.write(text), mode="w")
        result = {"run_dir": str(run_dir), "overrides": list(overrides), **scores}
        write_json(out_dir / "metrics.json", result)
    finally:
        folders.release(out_dir)
    return result


def free_eval_dir(root: Path = Path("outputs") / "eval") -> Path:
    """outputs/eval/<date>/<time>, or <time>-2, -3, ... when that one is taken already."""
    base = root / time.strftime("%Y-%m-%d/%H-%M-%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_output(output: Path, run_dir: Path, sources: list[Path], overwrite: bool) -> None:
    """A file dlrun-predict or dlrun-export may write: never its input, never a record of the run
    (only its predictions/ and export/ folders), and an existing file only when asked."""
    output = Path(os.path.abspath(output))
    for source in sources:
        if source.exists() and output.exists() and os.path.samefile(source, output):
            raise UserError(
                f"output: {output} is the input file; dlrun never writes over its input. "
                "Choose another output=."
            )
    run = Path(os.path.abspath(run_dir))
    if output.is_relative_to(run) and not any(
        output.is_relative_to(run / place) for place in ("predictions", "export")
    ):
        raise UserError(
            f"output: {output} is inside the run folder {run}, whose records are never "
            "overwritten; outputs go to its predictions/ or export/ folder, or outside it."
        )
    if output.exists() and not output.is_file():
        raise UserError(f"output: {output} exists and is not a file. Choose another output=.")
    if output.exists() and not overwrite:
        raise UserError(
            f"output: {output} already exists; it is never replaced unless you ask. Add "
            "overwrite=true to replace it, or choose another output=."
        )


def read_input(path: Path, trained: Trained):
    """(samples, lengths or None) from a file: a table (csv, parquet) by column names, an array
    (.npy) of samples shaped like the training data's, or a .npz with `x` and maybe `lengths`
    (padded sequences). Tables are read as training read them (dlrun.data.files)."""
    from dlrun.errors import first_line, regular_file

    regular_file(path, "input", "a .csv, .parquet, .npy or .npz file of samples")
    data = trained.data
    if path.suffix == ".npz":
        from dlrun.data.arrays import read_lengths, read_npz

        arrays = read_npz(path, ("x",), key="input")
        x = arrays["x"]
        if x.ndim == 2 and len(data.native_shape) == 2 and data.native_shape[1] == 1:
            x = x[:, :, None]  # (N, T) sequences of one feature
        x = check_samples(x, path, data.native_shape)
        lengths = arrays.get("lengths")
        if lengths is not None:
            lengths = read_lengths(lengths, data.spec.kind, data.native_shape, path)
        return x, lengths
    if path.suffix in (".csv", ".parquet"):
        from dlrun.data.files import read_table

        frame, _ = read_table(str(path), path.suffix[1:], key="input")
        if data.encoder is not None:
            return frame, None
        expected = data.spec.shape
        if len(expected) != 1 or frame.shape[1] != expected[0]:
            raise UserError(
                f"input: {path} has {frame.shape[1]} columns; this run's {data.spec.kind} data has "
                f"samples of shape {'x'.join(map(str, expected))}. Give a .npy array of samples instead."
            )
        return frame.to_numpy(dtype=np.float32), None
    if path.suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)  # never unpickle: that runs the file's code
        except (ValueError, OSError, EOFError) as ex:
            with open(path, "rb") as f:
                is_npy = f.read(6) == b"\x93NUMPY"
            if is_npy and "allow_pickle" in str(ex):
                raise UserError(
                    f"input: {path} holds Python objects (an object array saved with "
                    "allow_pickle=True), which dlrun does not load. Save the samples as numbers: "
                    "np.save(path, x.astype(np.float32))."
                ) from None
            reason = first_line(ex) if is_npy else "it does not start with NumPy's .npy header"
            raise UserError(f"input: cannot read {path} as a .npy array: {reason}.") from None
        return check_samples(array, path, data.native_shape), None
    raise UserError(
        f"input: {path} must be a .csv, .parquet, .npy or .npz file. Got '{path.suffix}'."
    )


def check_samples(array: np.ndarray, path: Path, shape: tuple) -> np.ndarray:
    """An array of samples for prediction: numbers, one sample per row, of the run's shape."""
    if array.dtype.kind not in "biuf" or array.ndim == 0 or len(array) == 0:
        got = f"{array.dtype} values" if array.dtype.kind not in "biuf" else "no samples"
        raise UserError(f"input: {path} holds {got}; this run needs numbers, one sample per row.")
    if tuple(array.shape[1:]) != tuple(shape):
        raise UserError(
            f"input: {path} holds samples of shape {'x'.join(map(str, array.shape[1:]))}; this run "
            f"needs {'x'.join(map(str, shape))}."
        )
    return array


def predict_file(run_dir: Path, input_path: Path, output: Path, overwrite: bool = False) -> Path:
    """A CSV of predictions (and class probabilities) for the samples in `input_path`."""
    import pandas as pd

    from dlrun.checkpoints import atomic_write
    from dlrun.data import adapt

    check_output(output, run_dir, [input_path], overwrite)
    trained = Trained(run_dir)
    data = trained.data
    raw, lengths = read_input(input_path, trained)
    x, lengths, ids = data.prepare(raw, str(input_path), lengths)
    x = adapt(x, data.spec, trained.prep.takes)
    outputs = trained.outputs(x, lengths if trained.prep.takes == "sequence" else None)
    spec = trained.prep.spec
    if trained.prep.entry.objective != "supervised":  # autoencoders: the latent of each sample
        width = outputs.shape[1] - 1
        columns = [f"z_{k}" for k in range(width)] + ["recon_mse"]
        frame = pd.DataFrame(outputs, columns=columns)
    elif spec.task == "classification":
        names = list(spec.class_names or range(spec.num_classes))
        frame = pd.DataFrame({"prediction": [names[k] for k in outputs.argmax(axis=1)]})
        for k, name in enumerate(names):
            frame[f"proba_{name}"] = outputs[:, k]
    else:
        values = outputs.reshape(len(outputs), -1)
        columns = (
            ["prediction"]
            if values.shape[1] == 1
            else [f"prediction_{i}" for i in range(values.shape[1])]
        )
        frame = pd.DataFrame(values, columns=columns)
    if ids is not None:  # long-format rows: one prediction per sequence, named by its id
        frame.insert(0, "id", ids)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda f: frame.to_csv(f, index=False), mode="w")
    return output


def generate_file(run_dir: Path, count: int, seed: int, output: Path, overwrite: bool) -> Path:
    """`count` samples drawn from a VAE's or a GAN's prior, decoded, in the data's own scale
    (image pixels in [0, 1]), as a .npy array (count, *one sample's shape)."""
    import torch

    from dlrun.checkpoints import atomic_write

    check_output(output, run_dir, [], overwrite)
    trained = Trained(run_dir)
    kind, name = trained.prep.entry.objective, trained.conf.model.name
    if kind not in ("vae", "gan"):
        what = (
            "a plain autoencoder has no prior to draw from (model=vae has)"
            if kind == "autoencoder"
            else "it predicts from inputs"
        )
        raise UserError(
            f"samples: '{name}' does not generate samples: {what}. Give input=FILE instead."
        )
    generator = trained.generator()
    z = torch.randn((count, generator.latent_size), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        samples = generator(z.to(trained.prep.device)).cpu().numpy().astype(np.float32)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, lambda f: np.save(f, samples, allow_pickle=False))
    return output


def raw_samples(data, n: int = 8, lengths: bool = False):
    """A few samples as the dataset loads them (what an exported model takes), drawn at random
    from the run's own statistics: the export needs no data, only the run folder. Images get
    pixels in [0, 1]; text token ids of its vocabulary; anything else values around the
    training split's mean. With `lengths`: (samples, each one's valid steps), padding zero."""
    rng = np.random.default_rng(0)
    shape = (n, *data.native_shape)
    if data.spec.kind == "image":
        return rng.uniform(0, 1, size=shape).astype(np.float32)
    if data.spec.vocab_size is not None:  # token ids; 0 pads, 1 is the unknown token
        x = rng.integers(1, data.spec.vocab_size, size=shape, dtype=np.int64)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
        x = x if data.norm is None else (x * data.norm[1] + data.norm[0]).astype(np.float32)
    if not lengths:
        return x
    steps = shape[1]
    valid = rng.integers(1, steps + 1, size=n, dtype=np.int64)
    valid[0] = steps  # one full sequence, one of a single step
    valid[-1] = 1
    from dlrun.data import pad_zero

    return pad_zero(x, valid), valid


def input_contract(data, raw: np.ndarray, fmt: str, lengths: bool = False) -> dict:
    """What an exported model takes and returns: names, order, dtype, shape."""
    spec = data.spec
    contract = {
        "format": fmt,
        "input": {
            "name": "input",
            "dtype": str(raw.dtype),
            "shape": ["batch", *raw.shape[1:]],
            "what": "samples as the dataset loads them; normalization"
            + (", resizing" if data.resize_to else "")
            + " and the reshape for the model are inside the exported model",
        },
        "output": {
            "name": "output",
            "dtype": "float32",
            "shape": ["batch", spec.out_features],
            "what": "class probabilities, in the order of `classes`"
            if spec.task == "classification"
            else "predicted values in the target's own units",
        },
    }
    if spec.kind == "image":
        contract["input"]["what"] += "; image pixels scaled to [0, 1] (8-bit values / 255)"
    if getattr(data.encoder, "feature_names", None) is not None:
        contract["input"]["features"] = list(data.encoder.feature_names)
        contract["input"]["what"] += (
            "; a table's columns encoded as listed in `features` (numbers as they are, "
            "categories one-hot or ordinal), with no missing values"
        )
    if spec.vocab_size is not None:
        steps = raw.shape[1]
        contract["input"]["what"] = (
            f"token ids of each text by the run's tokenizer (beside the model: `tokenizer`), "
            f"its first {steps} tokens, padded with 0 to {steps}; id 1 is a token the training "
            "texts never had"
        )
    if lengths:
        contract["lengths"] = {
            "name": "lengths",
            "dtype": "int64",
            "shape": ["batch"],
            "what": f"each sample's valid steps (1 to {raw.shape[1]}): its first steps are read, "
            "the rest is padding and never changes the output; give the full length for a "
            "sequence without padding",
        }
    if spec.task == "classification":
        contract["classes"] = list(spec.class_labels)
    return contract


def export(run_dir: Path, fmt: str, output: Path | None, overwrite: bool = False) -> Path:
    """The run's best network as ONNX or TorchScript, taking raw samples (its normalization
    inside); checks the export against dlrun-predict's outputs and writes the input contract
    beside it (`<file>.json`). For an autoencoder, a VAE or a GAN: its generative half (latent
    vectors in, samples in the data's own scale out)."""
    import torch

    from dlrun.data import adapt
    from dlrun.nn import RawInputs

    output = Path(output or run_dir / "export" / f"model.{'onnx' if fmt == 'onnx' else 'pt'}")
    contract_path = output.with_name(output.name + ".json")
    tokenizer = None
    for path in (output, contract_path):
        check_output(path, run_dir, [], overwrite)
    trained = Trained(run_dir, ["trainer.device=cpu"])
    if trained.prep.entry.family != "torch":
        raise UserError(
            f"format: only torch networks are exported; '{trained.conf.model.name}' is saved in its "
            f"own safe format already ({run_dir / 'checkpoints'})."
        )
    data, spec, takes = trained.data, trained.prep.spec, trained.prep.takes
    if trained.prep.entry.objective != "supervised":  # its generative half: latent -> sample
        model = trained.generator().cpu()
        z = torch.randn((8, model.latent_size), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model(z).numpy()
        x = (z,)
        contract = generator_contract(trained, fmt, tuple(expected.shape[1:]))
    else:
        masked = takes == "sequence" and spec.kind == "sequence"  # padded: lengths go along
        raw = raw_samples(data, lengths=masked)  # (8, *as loaded), and each one's valid steps
        raw, lengths = raw if masked else (raw, None)
        model = RawInputs(
            trained.model.float().cpu().eval(),
            data.norm,
            data.resize_to,
            raw.shape[1:],
            takes,
            data.spec.kind,
            spec.task == "classification",
            vocab_size=spec.vocab_size,
        ).eval()
        x = (
            (torch.as_tensor(raw),)
            if lengths is None
            else tuple(map(torch.as_tensor, (raw, lengths)))
        )
        encoded = dataclasses.replace(data, encoder=None)  # a table's samples come encoded here
        prepared = adapt(encoded.transform(raw, lengths=lengths), data.spec, takes)
        expected = trained.outputs(prepared, lengths)  # what dlrun-predict gives
        contract = input_contract(data, raw, fmt, lengths is not None)
        if spec.vocab_size is not None:  # the tokenizer travels beside the model
            tokenizer = output.with_name(output.name + ".tokenizer.json")
            check_output(tokenizer, run_dir, [], overwrite)
            contract["input"]["tokenizer"] = tokenizer.name
    output.parent.mkdir(parents=True, exist_ok=True)
    got = write_model(model.eval(), x, fmt, output)
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(
            f"the exported model's outputs differ from dlrun's (max {np.abs(got - expected).max()})"
        )
    if tokenizer is not None:
        import shutil

        shutil.copyfile(run_dir / "preprocessing" / "tokenizer.json", tokenizer)
    extra = output.with_name(output.name + ".data")
    if fmt == "onnx" and extra.exists():
        contract["external_data"] = extra.name  # keep it beside the model
    from dlrun.checkpoints import atomic_write

    atomic_write(contract_path, lambda f: f.write(json.dumps(contract, indent=2) + "\n"), mode="w")
    return output


def write_model(model, x: tuple, fmt: str, output: Path) -> np.ndarray:
    """`model` written as TorchScript or ONNX (batch size free); returns what the written file
    computes for the inputs `x` (the samples, and their lengths for padded sequences), read
    back through torch.jit or onnxruntime."""
    import torch

    from dlrun.checkpoints import atomic_write

    names = ["input", "lengths"][: len(x)]
    with torch.no_grad():
        if fmt == "torchscript":
            scripted = torch.jit.trace(model, x)
            atomic_write(output, lambda f: torch.jit.save(scripted, f))
            return torch.jit.load(str(output))(*x).numpy()
        try:
            import onnxruntime
        except ImportError:
            raise UserError(
                "format: 'onnx' needs onnx and onnxruntime (dlrun's export extra). Install them "
                f"with: {install_hint('export')}"
            ) from None
        # one file when it fits (ONNX keeps weights inline up to 2 GB); beyond, the weights go
        # to <file>.data beside it, which must travel with the model
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        batch = torch.export.Dim("batch")
        with warnings.catch_warnings():  # torch.export's notes on its own internals
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                model,
                x,
                str(output),
                input_names=names,
                output_names=["output"],
                dynamic_shapes=tuple({0: batch} for _ in x),
                dynamo=True,
                external_data=params > 1.5e9,
            )
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        return session.run(None, {n: t.numpy() for n, t in zip(names, x, strict=True)})[0]


def generator_contract(trained, fmt: str, shape: tuple) -> dict:
    """What an exported decoder or generator takes and returns."""
    kind, spec = trained.prep.entry.objective, trained.prep.spec
    latent = trained.model.latent_size
    drawn = (
        "latent vectors drawn from N(0, I)"
        if kind in ("vae", "gan")
        else ("latent codes, as dlrun-predict gives them (z_0, z_1, ...)")
    )
    scale = "image pixels in [0, 1]" if spec.kind == "image" else "the data's own units"
    return {
        "format": fmt,
        "what": f"the {'generator' if kind == 'gan' else 'decoder'} of a {kind}",
        "input": {"name": "input", "dtype": "float32", "shape": ["batch", latent], "what": drawn},
        "output": {
            "name": "output",
            "dtype": "float32",
            "shape": ["batch", *shape],
            "what": f"samples in the data's own scale ({scale})",
        },
    }


def _parse(argv: list[str], allowed: set[str], required: set[str], usage: str):
    """key=value arguments: dlrun-* options in `allowed`, the rest are config overrides."""
    options, overrides = {}, []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage)
            sys.exit(0)
        key, eq, value = arg.partition("=")
        if not eq:
            _fail(f"'{arg}' is not key=value.\n{usage}")
        if key in allowed:
            options[key] = value
        else:
            overrides.append(arg)
    missing = sorted(required - set(options))
    if missing:
        _fail(f"{missing[0]} is required.\n{usage}")
    return options, overrides


def _fail(message: str, code: int = 2) -> None:
    print(f"dlrun: {message}", file=sys.stderr)
    sys.exit(code)


def _guard(fn):
    def wrapped(argv: list[str] | None = None) -> None:
        try:
            fn(sys.argv[1:] if argv is None else argv)
        except UserError as ex:
            _fail(str(ex), ex.exit_code)
        except BrokenPipeError:  # `dlrun-eval ... | head -1`: the reader has gone
            from dlrun.errors import stdout_closed

            stdout_closed()
        except OSError as ex:  # a folder or file that cannot be made or written
            where = f" {ex.filename}" if ex.filename else ""
            _fail(f"cannot write{where}: {ex.strerror or ex}.")
        except Exception as ex:
            from dlrun.command import find_config_dir
            from dlrun.errors import describe_hydra_error

            message = describe_hydra_error(ex, find_config_dir())
            if message is None:
                raise
            _fail(message)

    return wrapped


def _flag(options: dict, key: str) -> bool:
    value = options.get(key, "false").lower()
    if value not in ("true", "false"):
        _fail(f"{key} must be true or false. Got '{options[key]}'.")
    return value == "true"


@_guard
def main_eval(argv: list[str]) -> None:
    usage = (
        "usage: dlrun-eval run_dir=PATH [out_dir=PATH] "
        f"[{' / '.join(f'{k}=...' for k in EVAL_MAY_SET)}]"
    )
    options, overrides = _parse(argv, {"run_dir", "out_dir"}, {"run_dir"}, usage)
    run_dir = Path(options["run_dir"])
    out_dir = Path(options.get("out_dir") or free_eval_dir())
    result = evaluate(run_dir, overrides, out_dir)
    from rich.console import Console

    from dlrun.report import metrics_table

    console = Console()
    console.print(metrics_table("evaluated again", result["val"], result["test"]))
    console.print(f"the best model of {run_dir}, on its own validation and test rows")
    console.print(f"written to {out_dir / 'metrics.json'} (the same numbers, all digits)")


@_guard
def main_predict(argv: list[str]) -> None:
    usage = (
        "usage: dlrun-predict run_dir=PATH input=FILE(.csv|.parquet|.npy|.npz) [output=FILE.csv] "
        "[overwrite=true]\n"
        "       dlrun-predict run_dir=PATH samples=N [seed=0] [output=FILE.npy]   (vae, gan, dcgan)"
    )
    allowed = {"run_dir", "input", "output", "overwrite", "samples", "seed"}
    options, overrides = _parse(argv, allowed, {"run_dir"}, usage)
    if overrides:
        _fail(f"unknown option {overrides[0].split('=')[0]}.\n{usage}")
    if ("input" in options) == ("samples" in options):
        _fail(
            f"give input=FILE (predict for its samples) or samples=N (generate), one of them.\n{usage}"
        )
    run_dir = Path(options["run_dir"])
    overwrite = _flag(options, "overwrite")
    if "samples" in options:
        count, seed = _count(options, "samples", 1), _count(options, "seed", 0)
        output = Path(options.get("output") or run_dir / "predictions" / "samples.npy")
        path = generate_file(run_dir, count, seed, output, overwrite)
        print(f"written to {path} ({count} samples)")
        return
    source = Path(options["input"])
    output = Path(options.get("output") or run_dir / "predictions" / f"{source.stem}.csv")
    path = predict_file(run_dir, source, output, overwrite)
    print(f"written to {path}")


def _count(options: dict, key: str, low: int) -> int:
    text = options.get(key, str(low))
    if not text.isdigit() or int(text) < low:
        _fail(f"{key} must be a whole number >= {low}. Got '{text}'.")
    return int(text)


@_guard
def main_export(argv: list[str]) -> None:
    usage = (
        "usage: dlrun-export run_dir=PATH [format=onnx|torchscript] [output=FILE] [overwrite=true]"
    )
    allowed = {"run_dir", "format", "output", "overwrite"}
    options, overrides = _parse(argv, allowed, {"run_dir"}, usage)
    if overrides:
        _fail(f"unknown option {overrides[0].split('=')[0]}.\n{usage}")
    fmt = options.get("format", "onnx")
    if fmt not in ("onnx", "torchscript"):
        _fail(f"format must be one of: onnx, torchscript. Got '{fmt}'.")
    output = options.get("output")
    run_dir = Path(options["run_dir"])
    path = export(run_dir, fmt, Path(output) if output else None, _flag(options, "overwrite"))
    contract = json.loads(path.with_name(path.name + ".json").read_text())
    print(f"written to {path} (its outputs checked against dlrun's own)")
    print(
        f"input: {contract['input']['dtype']} {contract['input']['shape']}: {contract['input']['what']}"
    )
    if "lengths" in contract:
        lengths = contract["lengths"]
        print(f"lengths: {lengths['dtype']} {lengths['shape']}: {lengths['what']}")
    if "tokenizer" in contract["input"]:
        print(f"tokenizer: {path.with_name(contract['input']['tokenizer'])} (keep it beside)")
    print(f"output: {contract['output']['shape']}: {contract['output']['what']}")
    if "external_data" in contract:
        print(f"its weights are in {contract['external_data']} beside it: keep the two together")
    print(f"the whole contract: {path.with_name(path.name + '.json')}")
