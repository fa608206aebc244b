"""Device profiles: one TOML file per real device, read and validated here.

A profile states what a job may use on a device (docs/profiles.md): total memory, what
the OS keeps, whether CPU and GPU share memory (Jetson), the execution provider, dtype,
the weight formats it runs, threads, and the oldest onnxruntime the device's software line
ships (which decides the bundle's opset). A job planned for a profile runs on its provider
unless the run says otherwise, and a bundle in a weight format it does not list is refused.
Built-in profiles are package data of edge_zo (`edge_zo/device_profiles/`, read through
importlib.resources, so they travel inside the wheel); a user's
own file works the same way: `--profile path/to/my-board.toml`.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6 ships it)
    import tomli as tomllib

from edge_zo.errors import ConfigError, UserError

PROVIDERS = ("cpu", "cuda")
DTYPES = ("fp32", "fp16")
# A bundle's weight format: its trained matrices' float dtype, or its quantized base
# (manifest `weights`, `edge-zo export --weights`)
WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
DTYPE_NAMES = {"float32": "fp32", "float16": "fp16"}
EXPORT_FLAGS = {"fp32": "--dtype fp32", "fp16": "--dtype fp16", "int8": "--weights int8", "int4": "--weights int4"}


@dataclass(frozen=True)
class DeviceProfile:
    name: str  # file stem; what `--profile` takes
    description: str  # the device and its software line, in words
    memory_mib: int  # RAM on the board (CPU side; all of it on unified-memory devices)
    reserved_mib: int  # what the OS, desktop and drivers keep; never planned for a job
    unified_memory: bool  # CPU and GPU allocate from one pool (Jetson)
    execution_provider: str  # "cpu" or "cuda"
    dtype: str  # precision of the base weights a bundle for this device should use
    threads: int  # intra-op threads: the physical cores available to the job
    min_onnxruntime: str  # oldest onnxruntime its software line ships, e.g. "1.16"
    opset: int  # the ONNX opset bundles for it must use (18 for runtimes before 1.17)
    gpu_memory_mib: int = 0  # discrete GPU memory; 0 when there is none or it is unified
    weight_formats: tuple = ()  # WEIGHT_FORMATS the device runs; empty: not stated, not checked
    source: str = ""  # where the figures come from (data sheet, release notes)

    @property
    def budget_mib(self) -> int:
        """Host memory a job may plan for: the board's memory less what the OS keeps."""
        return self.memory_mib - self.reserved_mib

    def run_defaults(self) -> dict:
        """What a run on this device uses unless its config says otherwise."""
        return {"provider": self.execution_provider}


def builtin_dir():
    """The built-in profiles' folder (a Traversable: a Path where edge_zo is on disk)."""
    from importlib.resources import files

    return files("edge_zo") / "device_profiles"


def builtin_names() -> list[str]:
    return sorted(p.name[:-len(".toml")] for p in builtin_dir().iterdir() if p.name.endswith(".toml"))


def load_profile(name_or_path: str) -> DeviceProfile:
    """A built-in profile by name, or a user's profile file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = builtin_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise UserError(f"no device profile named {name_or_path!r}; built-in profiles: "
                            f"{', '.join(builtin_names())}; or pass a .toml file's path")
    elif not path.is_file():
        raise UserError(f"{path}: profile file not found")
    return parse_profile(path)


def parse_profile(path) -> DeviceProfile:
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None
    raw.setdefault("name", Path(path.name).stem)  # path: a Path, or a Traversable (built-ins)
    spec = {f.name: f for f in fields(DeviceProfile)}
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise UserError(f"{path}: unknown keys {unknown}; known keys: {sorted(spec)}")
    missing = sorted(k for k, f in spec.items() if k not in raw and f.default is MISSING)
    if missing:
        raise UserError(f"{path}: missing keys {missing}")
    for key, value in raw.items():
        _check_type(path, key, value, spec[key].type)
    profile = DeviceProfile(**{**raw, "weight_formats": tuple(raw.get("weight_formats", ()))})
    _check_values(path, profile)
    return profile


def _check_type(path: Path, key: str, value, type_name: str) -> None:
    if type_name == "tuple":  # a TOML list of strings
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{path}: {key} = {value!r} must be a list of strings")
        return
    expected = {"int": int, "str": str, "bool": bool}[type_name]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(f"{path}: {key} = {value!r} must be {type_name}")


def _check_values(path: Path, p: DeviceProfile) -> None:
    problems = []
    if p.execution_provider not in PROVIDERS:
        problems.append(f"execution_provider {p.execution_provider!r} is not one of {PROVIDERS}")
    if p.dtype not in DTYPES:
        problems.append(f"dtype {p.dtype!r} is not one of {DTYPES}")
    if p.memory_mib <= 0 or p.threads <= 0 or p.reserved_mib < 0 or p.gpu_memory_mib < 0:
        problems.append("memory_mib and threads must be > 0; reserved_mib and gpu_memory_mib >= 0")
    if p.reserved_mib >= p.memory_mib:
        problems.append(f"reserved_mib {p.reserved_mib} leaves nothing of memory_mib {p.memory_mib}")
    if p.unified_memory and p.gpu_memory_mib:
        problems.append("a unified-memory device has no separate gpu_memory_mib; set it to 0")
    if p.execution_provider == "cpu" and p.dtype == "fp16":
        problems.append("fp16 weights on the CPU execution provider are slower than fp32; use fp32")
    if p.opset not in (18, 20):
        problems.append(f"opset {p.opset} is not one the exporter writes (18 or 20)")
    unknown = [f for f in p.weight_formats if f not in WEIGHT_FORMATS]
    if unknown:
        problems.append(f"weight_formats {unknown} are not among {WEIGHT_FORMATS}")
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))


def weight_format(manifest) -> str:
    """A bundle's weight format: its quantized base (int8, int4), else its trained matrices' dtype."""
    if manifest.weights != "fp32":
        return manifest.weights
    dtypes = {DTYPE_NAMES.get(m.dtype, m.dtype) for m in manifest.matrices if not m.dense}
    return "fp16" if "fp16" in dtypes else "fp32"


def check_weight_format(profile: DeviceProfile, manifest, bundle) -> None:
    """Refuse, in one line with the fix, a bundle whose weight format the profile does not run."""
    held = weight_format(manifest)
    if not profile.weight_formats or held in profile.weight_formats:
        return
    target = profile.dtype if profile.dtype in profile.weight_formats else profile.weight_formats[0]
    raise ConfigError(f"{bundle} holds {held} weights, which {profile.name} does not run (its weight_formats: "
                      f"{', '.join(profile.weight_formats)}): re-export it with `edge-zo export ... "
                      f"{EXPORT_FLAGS[target]}`, or use a profile that lists {held}")
