"""Use a trained run: evaluate it again, predict new samples, export the network.

    dlrun-eval run_dir=PATH [out_dir=PATH] [config overrides, e.g. data=iris data.test_split=0.3]
    dlrun-predict run_dir=PATH input=FILE [output=FILE.csv]   (default: RUN/predictions/)
    dlrun-export run_dir=PATH [format=onnx|torchscript] [output=FILE]   (default: RUN/export/)

Each reloads the run's resolved config (config.yaml) and its best model (checkpoints/best.pt, or
the estimator's model file) and rebuilds the data exactly as training did (same split, same
statistics from the training split). Nothing the run wrote is changed: evaluation goes to a new
folder, predictions and exports to new files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from dlrun.errors import UserError

GROUPS = ("model", "optim", "sched", "data", "logger")


def compose_from_run(run_dir: Path, overrides: list[str]):
    """The run's config (typed), with `overrides` applied as on the dlrun command line."""
    from hydra import compose, initialize_config_dir

    from dlrun.catalog import load_catalog
    from dlrun.cli import CONFIG_DIR

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"run_dir: {run_dir} is not a dlrun run folder (it has no config.yaml).")
    saved = OmegaConf.load(path)
    switched = {o.split("=", 1)[0] for o in overrides if "." not in o.split("=", 1)[0]}
    choices = [f"{g}={saved[g].name}" for g in GROUPS if g in saved and g not in switched]
    load_catalog()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=choices + list(overrides))
    kept = {k: v for k, v in saved.items() if k not in switched}
    cfg = OmegaConf.merge(cfg, kept)
    values = [o for o in overrides if "." in o.split("=", 1)[0]]
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(values)) if values else cfg


class Trained:
    """A run's best model, ready to predict on inputs shaped for it."""

    def __init__(self, run_dir: Path, overrides: list[str] = ()):
        from dlrun.runner import prepare
        from dlrun.validate import validate

        self.run_dir = Path(run_dir)
        self.cfg = compose_from_run(self.run_dir, list(overrides))
        self.conf = validate(self.cfg)
        self.prep = prepare(self.conf)
        entry, spec, conf = self.prep.entry, self.prep.spec, self.conf
        ckpt_dir = self.run_dir / "checkpoints"
        if entry.family == "torch":
            from dlrun.checkpoints import load_checkpoint

            self.model = entry.build(conf.model, spec)
            if spec.task == "regression":
                from dlrun.nn import TargetScaled

                width = spec.num_targets
                self.model = TargetScaled(self.model, np.zeros(width), np.ones(width))
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

    def outputs(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) or predictions (N, T)."""
        if self.prep.entry.family != "torch":
            return self.model.predict(x)
        import torch

        from dlrun.training import predict

        tensor = torch.as_tensor(x, device=self.prep.device)
        return predict(self.model, tensor, self.prep.spec.task, self.conf.trainer.precision)


def evaluate(run_dir: Path, overrides: list[str], out_dir: Path) -> dict:
    """Recompute val and test metrics of a run's best model; write them to out_dir."""
    from dlrun.checkpoints import write_json
    from dlrun.metrics import compute_metrics

    trained = Trained(run_dir, overrides)
    scores = {}
    for name in ("val", "test"):
        x, y = trained.prep.splits[name]
        scores[name] = compute_metrics(
            trained.prep.spec.task, y, trained.outputs(x), trained.conf.trainer.loss
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(
        OmegaConf.to_yaml(trained.cfg, resolve=True), encoding="utf-8"
    )
    result = {"run_dir": str(run_dir), "overrides": list(overrides), **scores}
    write_json(out_dir / "metrics.json", result)
    return result


def read_input(path: Path, trained: Trained):
    """Samples from a file: a table (csv, parquet) by column names, or an array (.npy) of samples
    shaped like the training data's. Tables are read as training read them (dlrun.data.files)."""
    from dlrun.errors import first_line, regular_file

    regular_file(path, "input", "a .csv, .parquet or .npy file of samples")
    data = trained.prep.data
    if path.suffix in (".csv", ".parquet"):
        from dlrun.data.files import read_table

        frame, _ = read_table(str(path), path.suffix[1:], key="input")
        if data.encoder is not None:
            return frame
        expected = data.spec.shape
        if len(expected) != 1 or frame.shape[1] != expected[0]:
            raise UserError(
                f"input: {path} has {frame.shape[1]} columns; this run's {data.spec.kind} data has "
                f"samples of shape {'x'.join(map(str, expected))}. Give a .npy array of samples instead."
            )
        return frame.to_numpy(dtype=np.float32)
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
        if array.dtype.kind not in "biuf" or array.ndim == 0 or len(array) == 0:
            got = f"{array.dtype} values" if array.dtype.kind not in "biuf" else "no samples"
            raise UserError(
                f"input: {path} holds {got}; this run needs numbers, one sample per row."
            )
        shape = data.native_shape or tuple(data.x_train.shape[1:])
        if tuple(array.shape[1:]) != shape:
            raise UserError(
                f"input: {path} holds samples of shape {'x'.join(map(str, array.shape[1:]))}; this run "
                f"needs {'x'.join(map(str, shape))}."
            )
        return array
    raise UserError(f"input: {path} must be a .csv, .parquet or .npy file. Got '{path.suffix}'.")


def predict_file(run_dir: Path, input_path: Path, output: Path) -> Path:
    """A CSV of predictions (and class probabilities) for the samples in `input_path`."""
    import pandas as pd

    from dlrun.checkpoints import atomic_write
    from dlrun.data import adapt

    trained = Trained(run_dir)
    data, entry = trained.prep.data, trained.prep.entry
    raw = read_input(input_path, trained)
    x = adapt(data.transform(raw, shown=str(input_path)), data.spec, entry.takes)
    outputs = trained.outputs(x)
    spec = trained.prep.spec
    if spec.task == "classification":
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
    atomic_write(output, lambda f: frame.to_csv(f, index=False), mode="w")
    return output


def export(run_dir: Path, fmt: str, output: Path | None) -> Path:
    """The run's best network as ONNX or TorchScript; checks the export against the original."""
    import torch

    trained = Trained(run_dir, ["trainer.device=cpu"])
    if trained.prep.entry.family != "torch":
        raise UserError(
            f"format: only torch networks are exported; '{trained.conf.model.name}' is saved in its "
            f"own safe format already ({run_dir / 'checkpoints'})."
        )
    model = trained.model.float().cpu().eval()
    x = torch.as_tensor(trained.prep.splits["test"][0][:8])
    output = Path(output or run_dir / "export" / f"model.{'onnx' if fmt == 'onnx' else 'pt'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = model(x).numpy()
        if fmt == "torchscript":
            scripted = torch.jit.trace(model, x)
            scripted.save(str(output))
            got = torch.jit.load(str(output))(x).numpy()
        else:
            try:
                import onnxruntime
            except ImportError:
                raise UserError("format: 'onnx' needs pip install 'dlrun[export]'.") from None
            torch.onnx.export(
                model,
                (x,),
                str(output),
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
            )
            session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
            got = session.run(None, {"input": x.numpy()})[0]
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(
            f"the exported model's outputs differ from the original's (max {np.abs(got - expected).max()})"
        )
    return output


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
        except Exception as ex:
            from dlrun.errors import describe_hydra_error

            message = describe_hydra_error(ex, Path(__file__).parent)
            if message is None:
                raise
            _fail(message)

    return wrapped


@_guard
def main_eval(argv: list[str]) -> None:
    usage = "usage: dlrun-eval run_dir=PATH [out_dir=PATH] [config overrides, e.g. data=iris]"
    options, overrides = _parse(argv, {"run_dir", "out_dir"}, {"run_dir"}, usage)
    run_dir = Path(options["run_dir"])
    out_dir = Path(
        options.get("out_dir") or Path("outputs") / "eval" / time.strftime("%Y-%m-%d/%H-%M-%S")
    )
    result = evaluate(run_dir, overrides, out_dir)
    print(json.dumps({k: result[k] for k in ("val", "test")}, indent=2))
    print(f"written to {out_dir / 'metrics.json'}")


@_guard
def main_predict(argv: list[str]) -> None:
    usage = "usage: dlrun-predict run_dir=PATH input=FILE(.csv|.parquet|.npy) [output=FILE.csv]"
    options, overrides = _parse(argv, {"run_dir", "input", "output"}, {"run_dir", "input"}, usage)
    if overrides:
        _fail(f"unknown option {overrides[0].split('=')[0]}.\n{usage}")
    source = Path(options["input"])
    run_dir = Path(options["run_dir"])
    output = Path(options.get("output") or run_dir / "predictions" / f"{source.stem}.csv")
    output.parent.mkdir(parents=True, exist_ok=True)
    print(f"written to {predict_file(run_dir, source, output)}")


@_guard
def main_export(argv: list[str]) -> None:
    usage = "usage: dlrun-export run_dir=PATH [format=onnx|torchscript] [output=FILE]"
    options, overrides = _parse(argv, {"run_dir", "format", "output"}, {"run_dir"}, usage)
    if overrides:
        _fail(f"unknown option {overrides[0].split('=')[0]}.\n{usage}")
    fmt = options.get("format", "onnx")
    if fmt not in ("onnx", "torchscript"):
        _fail(f"format must be one of: onnx, torchscript. Got '{fmt}'.")
    output = options.get("output")
    path = export(Path(options["run_dir"]), fmt, Path(output) if output else None)
    print(f"written to {path} (outputs checked against the original model)")
