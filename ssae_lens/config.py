"""One config schema for the command line, the demo and the studies: YAML into dataclasses.

A config is a YAML mapping whose keys are the fields of a dataclass; nested sections are nested
dataclasses. Every config shares the fields of :class:`RunConfig` (``model``, ``backend``,
``hook_name``, ``device``, ``precision``, ``out_dir``) and uses the shared sections it needs:

- ``columns:`` :class:`ColumnsSection`: the source, target and label fields of a pairs file;
- ``harvest:`` :class:`HarvestSection`: batching, the train/test split, the activation cache;
- ``train:`` :class:`~ssae_lens.ssae.TrainingSSAEConfig` fields (checked when the config is
  built, see :func:`train_options`; ``d_in`` comes from the data);
- ``steer:`` :class:`SteerSection`, ``diagnose:`` :class:`DiagnoseSection`, ``publish:``
  :class:`PublishSection`;
- ``sae:`` :class:`ReferenceSAESection`: a SAELens SAE from
  :func:`~ssae_lens.saes.reference.train_reference_sae`;
- ``effects:`` :class:`EffectsSection` and ``sae_ts:`` :class:`SaeTsSection`: SAE-TS effect
  data and targeted vectors (``ssae-lens effects``, ``ssae-lens sae-ts``).

:class:`ExperimentConfig` is the config of the ``ssae-lens`` commands and of the demo
(:class:`ssae_lens.demo.DemoConfig` only moves ``out_dir``). The studies in ``benchmarks/``
(``paper.py``, ``sae_ts.py``) subclass :class:`RunConfig` with their own options and read
``--config FILE --set key=value`` with :func:`parse_config_args`.

    cfg = load_config("configs/binary.yaml", ExperimentConfig, ["train.d_sae=3", "seeds=[0,1]"])

An unknown or misspelt key is a :class:`ConfigError` that names the closest valid key; values
from YAML and from ``key=value`` overrides are coerced to the field's type. A dataclass section
given in part keeps the config's defaults for its other keys; a mapping section (``train:``,
``synthetic:``) given replaces its default. This module imports
neither torch nor SAELens, so ``ssae-lens --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

import yaml

from ssae_lens._core.io import write_text_atomic
from ssae_lens._core.precision import Precision

if TYPE_CHECKING:
    from ssae_lens.ssae.model import TrainingSSAEConfig

__all__ = [
    "ColumnsSection",
    "ConfigError",
    "DiagnoseSection",
    "EffectsSection",
    "ExperimentConfig",
    "HarvestSection",
    "PublishSection",
    "ReferenceSAESection",
    "RunConfig",
    "SaeTsSection",
    "SteerSection",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_config_args",
    "save_config",
    "train_options",
]

T = TypeVar("T")

# TrainingSSAEConfig fields a config may not set: d_in comes from the data, metadata is filled
# in from the experiment (model, hook, dataset) when the SSAE is saved.
_DERIVED_TRAIN_FIELDS = ("d_in", "metadata")


class ConfigError(ValueError):
    """A config file or override that does not fit its dataclass (one-line message)."""


@dataclass
class RunConfig:
    """The fields every config has: the model, the hook point read, the device, the precision
    the model runs in (:mod:`ssae_lens._core.precision`), the output.

    ``backend`` is how the model is run: ``"hooked"`` (``HookedTransformer``) or ``"bridge"``
    (``TransformerBridge``, any Hugging Face causal LM); see :mod:`ssae_lens.models`.
    """

    model: str = "gemma-3-270m"
    backend: Literal["hooked", "bridge"] = "hooked"
    hook_name: str = "blocks.12.hook_resid_post"
    device: str = "cpu"
    precision: Precision = "float32"
    out_dir: str = "runs/experiment"

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return config_from_dict(cls, data)


@dataclass
class HarvestSection:
    """How shifts are harvested: batching, the train/test split and the activation cache."""

    batch_size: int = 32
    test_fraction: float = 0.25
    split_seed: int = 0
    use_cache: bool = True


@dataclass
class SteerSection:
    """What is steered and generated (``ssae-lens steer``, the demo): latent, scale, prompts."""

    latent: int = 0
    # None: for an SSAE decoder row, scale_fraction x the median norm of the training shifts; for a
    # saved --vector, its default_scale.
    scale: float | None = None
    scale_fraction: float = 0.6
    positions: Literal["all", "prompt", "generated"] = "all"
    prompts: list[str] = field(
        default_factory=lambda: ["He is my brother and he", "The king said that"]
    )
    max_new_tokens: int = 10


@dataclass
class DiagnoseSection:
    """Options of ``diagnose_decomposition``."""

    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])
    top_k: int = 10


@dataclass
class ColumnsSection:
    """Which fields of a ``.jsonl`` / ``.csv`` pairs file (``dataset:``) hold the texts and labels.

    ``labels: null`` reads a ``labels`` object per JSONL line (none for CSV); a list names the
    fields (CSV columns) to read as concepts, one signed number each.
    """

    source: str = "source"
    target: str = "target"
    labels: list[str] | None = None


@dataclass
class PublishSection:
    """Where ``ssae-lens publish`` puts the dictionary on the Hugging Face Hub."""

    repo_id: str | None = None
    sae_id: str | None = None
    dry_run: bool = False


@dataclass
class ReferenceSAESection:
    """A SAELens SAE trained on single activations by
    :func:`~ssae_lens.saes.reference.train_reference_sae` (the same defaults)."""

    d_sae: int = 2048
    architecture: Literal["topk", "standard"] = "topk"
    k: int = 32
    l1_coefficient: float = 5.0
    n_tokens: int = 300_000
    batch_size: int = 512
    lr: float = 1e-3
    corpus_options: dict[str, Any] | None = None  # reference_corpus's options

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``train_reference_sae``."""
        return dataclasses.asdict(self)


@dataclass
class EffectsSection:
    """SAE-TS effect data (``ssae-lens effects``): the SAE, the directions, the scale, the
    rollouts.

    The SAE is ``sae_path`` (``SAE.load_from_disk``), else ``sae_release`` / ``sae_id``
    (``SAE.from_pretrained``), else the reference SAE of the ``sae:`` section trained at
    ``hook_name``. The directions are ``n_decoder`` decoder rows (``features`` and the
    ``sae_ts.targets`` first), ``n_mix`` mixes of 2-4 rows and ``n_random`` Gaussian ones
    (:func:`~ssae_lens.sae_ts.effect_directions`, seeded by ``seed``). With ``scale`` unset,
    the scale is calibrated (:func:`~ssae_lens.sae_ts.calibrate_scales`: the LM loss on
    ``calibration_texts`` reaching ``target_loss``, or up by ``target_loss_increase``, 0.5
    nats when neither is set): the median over ``calibration_directions`` of the directions
    for all of them (``calibrate: median``), or each direction's own (``calibrate: each``).
    The rollouts follow :func:`~ssae_lens.sae_ts.measure_effects`'s defaults, the reference's
    protocol: ``prompts`` unset means ``EFFECT_PROMPTS`` (3 BOS-only and 11 short openings),
    rollouts ``total_tokens`` long with the prompt (32; or ``max_new_tokens`` generated),
    top-``top_k`` sampling, features averaged over ``positions``.
    """

    sae_path: str | None = None
    sae_release: str | None = None
    sae_id: str | None = None
    features: list[int] = field(default_factory=list)
    n_decoder: int = 256
    n_mix: int = 64
    n_random: int = 64
    scale: float | None = None
    calibrate: Literal["median", "each"] = "median"
    calibration_directions: int = 8
    calibration_texts: list[str] | None = None  # None: built-in templated sentences
    target_loss_increase: float | None = None
    target_loss: float | None = None
    prompts: list[str] | None = None  # None: ssae_lens.sae_ts.EFFECT_PROMPTS
    n_samples: int = 64
    total_tokens: int | None = None  # None: 32, unless max_new_tokens is set
    max_new_tokens: int | None = None
    positions: Literal["all", "generated"] = "all"
    temperature: float = 1.0
    top_k: int | None = 50
    readout: Literal["text", "steered"] = "text"
    batch_size: int = 64
    chunk_size: int = 32  # directions per resumable chunk (and per share of a rank)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sae_path and self.sae_release:
            raise ConfigError("effects: set sae_path or sae_release, not both.")
        if bool(self.sae_release) != bool(self.sae_id):
            raise ConfigError("effects: sae_release and sae_id go together (SAE.from_pretrained).")
        for name in ("n_samples", "total_tokens", "max_new_tokens", "top_k", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"effects.{name} must be >= 1, got {value}.")
        if self.chunk_size < 1:
            raise ConfigError(f"effects.chunk_size must be >= 1, got {self.chunk_size}.")
        for a, b in (("total_tokens", "max_new_tokens"), ("target_loss", "target_loss_increase")):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise ConfigError(f"effects: set {a} or {b}, not both.")
        if self.prompts is not None and not self.prompts:
            raise ConfigError("effects.prompts is empty; leave it unset for EFFECT_PROMPTS.")
        if self.n_decoder + self.n_mix + self.n_random + len(self.features) < 2:
            raise ConfigError("effects: measure at least 2 directions (n_decoder, n_mix, ...).")


@dataclass
class SaeTsSection:
    """SAE-TS vectors (``ssae-lens sae-ts``): the effect data, the fit and the targets.

    ``targets`` names weighted feature sets: ``{french: {1203: 1.0, 88: 0.5}, formal: [12]}``
    (a list weighs each feature 1; a negative weight asks for a decrease). The effect data is
    ``effects`` (a file or folder), else ``effects_repo`` on the Hub (``effects_subfolder``),
    else ``<out_dir>/effects/effects.safetensors``, measured first if missing.
    """

    targets: dict[str, Any] = field(default_factory=dict)
    effects: str | None = None
    effects_repo: str | None = None
    effects_subfolder: str | None = None
    weight_decay: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    test_fraction: float = 0.2
    bias_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.targets = {str(k): _target_weights(k, v) for k, v in self.targets.items()}
        if self.effects and self.effects_repo:
            raise ConfigError("sae_ts: set effects or effects_repo, not both.")
        if not self.weight_decay:
            raise ConfigError("sae_ts.weight_decay is empty: give at least one value.")


def _target_weights(name: Any, value: Any) -> dict[int, float]:
    """A target as ``{feature: weight}`` from a mapping or a list of features."""
    if isinstance(value, list | tuple):
        value = {f: 1.0 for f in value}
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            f"sae_ts.targets.{name} must be a non-empty mapping feature: weight or a list of "
            f"features, got {value!r}."
        )
    try:
        weights = {int(f): float(w) for f, w in value.items()}
    except (TypeError, ValueError):
        raise ConfigError(
            f"sae_ts.targets.{name}: features must be integers and weights numbers, got {value!r}."
        ) from None
    if any(f < 0 for f in weights):
        raise ConfigError(f"sae_ts.targets.{name}: features must be >= 0, got {sorted(weights)}.")
    if not all(math.isfinite(w) for w in weights.values()):
        raise ConfigError(f"sae_ts.targets.{name}: weights must be finite numbers, got {value!r}.")
    return weights


@dataclass
class ExperimentConfig(RunConfig):
    """One experiment: a model, a hook point, a pairs dataset and what to do with them.

    ``dataset`` is a registered name (see :func:`ssae_lens.list_pairs`), a ``.jsonl`` / ``.csv``
    pairs file (its fields named by ``columns:``), or ``"synthetic"`` (shifts from
    :func:`ssae_lens.data.synthetic.make_synthetic_shifts` with the ``synthetic:`` options; no
    model is run). A relative ``dataset`` path, like ``out_dir``, is relative to the working
    directory the command runs in, not to the config file.
    """

    dataset: str = "binary"
    position: Literal["last", "mean"] = "last"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    columns: ColumnsSection = field(default_factory=ColumnsSection)
    harvest: HarvestSection = field(default_factory=HarvestSection)
    train: dict[str, Any] = field(default_factory=lambda: {"d_sae": 2})
    steer: SteerSection = field(default_factory=SteerSection)
    diagnose: DiagnoseSection = field(default_factory=DiagnoseSection)
    publish: PublishSection = field(default_factory=PublishSection)
    synthetic: dict[str, Any] = field(default_factory=dict)
    sae: ReferenceSAESection = field(default_factory=ReferenceSAESection)
    effects: EffectsSection = field(default_factory=EffectsSection)
    sae_ts: SaeTsSection = field(default_factory=SaeTsSection)

    def __post_init__(self) -> None:
        self.train = train_options(self.train)
        if "d_sae" not in self.train:
            raise ConfigError("train.d_sae is required: the number of SSAE code units.")
        self.training_config(d_in=1)  # validates the values (choices, ranges) now
        is_file = self.dataset.endswith((".jsonl", ".csv"))
        if self.columns != ColumnsSection() and not is_file:
            raise ConfigError(
                f"columns: names the fields of a .jsonl / .csv pairs file, but dataset is "
                f"{self.dataset!r}; set dataset to your pairs file or drop columns."
            )
        if self.dataset == "synthetic":
            from ssae_lens.data.synthetic import make_synthetic_shifts

            self.synthetic = _coerce_options(self.synthetic, make_synthetic_shifts, "synthetic")
        elif not is_file:
            from ssae_lens.data import list_pairs

            names = [*list_pairs(), "synthetic"]
            if self.dataset not in names:
                raise ConfigError(
                    f"unknown dataset {self.dataset!r}{_hint(self.dataset, names)}; use one of "
                    f"{', '.join(names)}, or a .jsonl / .csv pairs file."
                )
        if not self.seeds:
            raise ConfigError("seeds is empty: give at least one seed, e.g. seeds=[0].")

    def training_config(self, d_in: int) -> TrainingSSAEConfig:
        """The ``train:`` section as a :class:`~ssae_lens.ssae.TrainingSSAEConfig` for shifts of
        width ``d_in``."""
        from ssae_lens.ssae.model import TrainingSSAEConfig  # noqa: F811 (lazy: SAELens)

        try:
            return TrainingSSAEConfig(d_in=d_in, **self.train)
        except ValueError as e:
            raise ConfigError(f"train: {e}") from None


def train_options(
    options: Any, where: str = "train", excluded: Sequence[str] = ()
) -> dict[str, Any]:
    """``options`` checked against :class:`~ssae_lens.ssae.TrainingSSAEConfig`'s fields and
    coerced to their types; ``d_in``, ``metadata`` and ``excluded`` are set by the program."""
    from ssae_lens.ssae.model import TrainingSSAEConfig  # noqa: F811 (lazy: SAELens)

    return _coerce_options(options, TrainingSSAEConfig, where, (*_DERIVED_TRAIN_FIELDS, *excluded))


def _hint(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-serialisable data."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and coercing values to field types."""
    kwargs = _coerce_options(data, cls, where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where + ': ' if where else ''}{e}") from None


def _coerce_options(
    data: Any, target: type | Callable[..., Any], where: str, excluded: Sequence[str] = ()
) -> dict[str, Any]:
    """``data``'s keys checked against the fields of dataclass ``target`` (or the parameters of
    function ``target``), and its values coerced to their types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}.")
    hints = {k: v for k, v in typing.get_type_hints(target).items() if k not in excluded}
    defaults: dict[str, Any] = {}
    if dataclasses.is_dataclass(target):
        fields = [f for f in dataclasses.fields(target) if f.name in hints]
        valid = [f.name for f in fields]
        defaults = {f.name: _default(f) for f in fields}
    else:
        valid = [k for k in hints if k != "return"]
    out = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in valid:
            prefix = f"{where}." if where else ""
            close = [prefix + k for k in difflib.get_close_matches(str(key), valid, n=1)]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint}.")
        default = defaults.get(key)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # A section given in part keeps this config's defaults for the rest.
            value = {**config_to_dict(default), **value}
        out[key] = _coerce(value, hints[key], path)
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """``value`` as type ``hint``; strings (from ``--set``) are parsed as YAML scalars first."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        is_null = value is None or (
            isinstance(value, str) and value.lower() in ("null", "none", "~")
        )
        if is_null and type(None) in args:
            return None
        errors, literal_errors, choices = [], [], []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                if typing.get_origin(arg) is Literal:
                    literal_errors.append(str(e))
                    choices += typing.get_args(arg)
                else:
                    errors.append(str(e))
        if len(errors) == 1 and choices:  # a type or named choices (float | "auto")
            raise ConfigError(f"{errors[0].removesuffix('.')} (or one of {choices}).")
        errors += literal_errors
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: no type fits {value!r}.")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(
            f"{path} must be one of {list(args)}, got {value!r}{_hint(str(value), map(str, args))}."
        )
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, _parsed(value), path)
    if origin in (list, tuple) or hint in (list, tuple):
        value = _parsed(value)
        if isinstance(value, str | int | float):
            value = [v.strip() for v in value.split(",")] if isinstance(value, str) else [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path} must be a list, got {value!r}.")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        value = _parsed(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}.")
        return dict(value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, got {value!r}.")
    if hint is bool:
        value = _parsed(value)
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}.")
    if hint in (int, float):
        parsed = _parsed(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "3e-3" as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        if isinstance(parsed, bool) or not isinstance(parsed, int | float):
            raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}.")
        # NaN passes every "<= 0" check after this one, and inf is no setting either.
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ConfigError(f"{path} must be a finite number, got {value!r}.")
        if hint is int and not float(parsed).is_integer():
            raise ConfigError(f"{path} must be an integer, got {value!r}.")
        try:
            return hint(parsed)
        except OverflowError:
            raise ConfigError(f"{path} is too large for a {hint.__name__}: {value!r}.") from None
    return value


def _parsed(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except (yaml.YAMLError, ValueError):  # ValueError: a date-like value such as 2024-13-45
        return value


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides (dotted keys for sections: ``train.d_sae=4``) to raw data.

    Values stay strings here; :func:`config_from_dict` coerces them to the field types.
    """
    data = dict(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set train.d_sae=4).")
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[leaf] = value
    return data


def load_config(
    path: str | os.PathLike | None, cls: type[T], overrides: typing.Sequence[str] = ()
) -> T:
    """Load a YAML config file (or only defaults, if ``path`` is None) into dataclass ``cls``."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist.")
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8-sig")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8."
            ) from None
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            at = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(
                f"{path} is not valid YAML{at}: {getattr(e, 'problem', e)}."
            ) from None
        except (ValueError, RecursionError) as e:  # a date-like value such as 2024-13-45
            raise ConfigError(f"{path} holds a value YAML cannot read: {e}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of config keys.")
    return config_from_dict(cls, apply_overrides(data, overrides))


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write a config dataclass as YAML, atomically."""
    return write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def parse_config_args(
    cls: type[T], argv: Sequence[str] | None = None, *, description: str | None = None
) -> T:
    """A script's ``--config FILE`` and ``--set key=value`` (repeatable) loaded into ``cls``.

    A bad config, key or value exits with status 2 and one line naming the fix.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="YAML config (default: the defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set seeds=[0,1] (dotted keys for sections)",
    )
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, cls, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
