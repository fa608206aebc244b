"""Where a run's files are: portable run folders.

A run records its bundle and data files twice in config.json: as absolute paths, and
relative to the run folder (`paths_from_run`), with the bundle's fingerprint
(edge_zo/bundle_hash.py) and each data file's size and SHA-256 (`data_files`). So a run
folder moved or copied to another machine still finds its files:

- the bundle: `--bundle DIR` when given (it must hold the model the run was trained on),
  else the recorded absolute path, else the recorded path from the run folder, else a
  bundle folder inside the run folder or beside it (a sibling) whose fingerprint matches;
- a data file (needed to resume): `--data` / `--eval-data` when given (same size and
  SHA-256 as recorded: a run is a function of its data), else the recorded absolute path,
  else the recorded path from the run folder, else a file of that name beside the run.

A run written before these fields (relative paths from the directory it was started in)
is read the same way: its recorded paths are tried as they are, from the current directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edge_zo.bundle import MANIFEST_NAME
from edge_zo.bundle_hash import fingerprint
from edge_zo.errors import UserError
from edge_zo.optim.base import ConfigError

DATA_KEYS = ("data", "eval_data")


def record(values: dict, run_dir: Path) -> dict:
    """config.json's values with absolute paths, paths from the run folder, the bundle's
    fingerprint and each data file's size and SHA-256."""
    out, relative, files = dict(values), {}, {}
    for key in ("bundle", *DATA_KEYS):
        if values.get(key):
            path = Path(values[key]).resolve()
            out[key] = str(path)
            relative[key] = os.path.relpath(path, Path(run_dir).resolve())
            if key in DATA_KEYS and path.is_file():
                files[key] = file_identity(path)
    try:
        out["bundle_fingerprint"] = fingerprint(out["bundle"])
    except (UserError, OSError, KeyError):
        pass  # a bundle that cannot be read: `finetune` has read it before it saves
    return {**out, "paths_from_run": relative, "data_files": files}


def file_identity(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def locate(values: dict, run_dir: Path, bundle: str | None = None, data: dict | None = None,
           need_data: bool = False) -> dict:
    """The run's recorded values with its bundle (and, when `need_data`, its data files)
    found as the module docstring says; `data` maps data/eval_data to files given now."""
    relative = values.get("paths_from_run", {})
    out = dict(values)
    out["bundle"] = find_bundle(run_dir, values.get("bundle", ""), relative.get("bundle"),
                                values.get("bundle_fingerprint"), bundle)
    for key in DATA_KEYS:
        given = (data or {}).get(key)
        if given or (need_data and values.get(key)):
            out[key] = find_data(run_dir, key, values.get(key, ""), relative.get(key),
                                 values.get("data_files", {}).get(key), given)
    return out


def find_bundle(run_dir: Path, recorded: str, relative: str | None, expected: str | None,
                given: str | None) -> str:
    if given:
        if not (Path(given) / MANIFEST_NAME).is_file():
            raise UserError(f"--bundle {given}: not a bundle folder (no {MANIFEST_NAME})")
        if expected and fingerprint(given) != expected:
            raise ConfigError(f"--bundle {given} holds another model than {run_dir} was trained on (bundle "
                              f"fingerprint {fingerprint(given)}, recorded {expected}); pass the bundle "
                              "the run was trained on")
        return str(given)
    other = None  # a recorded place that now holds another model: said if nothing else is found
    for candidate, recorded_place in _bundle_candidates(run_dir, recorded, relative):
        try:
            now = fingerprint(candidate) if (candidate / MANIFEST_NAME).is_file() else None
        except (UserError, OSError):  # a broken folder is not the run's bundle
            now = None
        if now is None:
            continue
        if now == expected or (expected is None and recorded_place):  # a folder beside: only by its fingerprint
            return str(candidate)
        if other is None and recorded_place:
            other = (candidate, now)
    if expected is None:  # nothing recorded to check it by: as recorded (reading it fails later)
        return recorded
    if other:
        raise ConfigError(f"{other[0]} now holds another model than {run_dir} was trained on (bundle "
                          f"fingerprint {other[1]}, recorded {expected}); put the original bundle back in "
                          "that folder, pass it with --bundle DIR, or start a new run on this one")
    raise ConfigError(f"{run_dir}: its bundle is not at {recorded or '(none recorded)'} nor beside the run"
                      f"{f' (fingerprint {expected})' if expected else ''}; pass it with --bundle DIR")


def _bundle_candidates(run_dir: Path, recorded: str, relative: str | None):
    """(folder, whether the run recorded it), in the order they are tried."""
    run_dir = Path(run_dir)
    if recorded:
        yield Path(recorded), True
    if relative:
        yield run_dir / relative, True
    for folder in (run_dir, run_dir.resolve().parent):  # inside the run, then its siblings
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and p.resolve() != run_dir.resolve())
        except OSError:
            continue
        yield from ((child, False) for child in children)


def find_data(run_dir: Path, key: str, recorded: str, relative: str | None, identity: dict | None,
              given: str | None) -> str:
    flag = "--" + key.replace("_", "-")
    if given:
        if not Path(given).is_file():
            raise UserError(f"{flag} {given}: no such file")
        if identity and file_identity(Path(given)) != identity:
            raise ConfigError(f"{flag} {given} is not the file {run_dir} was trained on (its size or SHA-256 "
                              "differs): a run is a function of its data; pass the original file, or start a "
                              "new run on this one")
        return str(given)
    candidates = [Path(recorded)] if recorded else []
    candidates += [Path(run_dir) / relative] if relative else []
    candidates += [Path(run_dir).resolve().parent / Path(recorded).name] if recorded else []
    changed = None
    for candidate in filter(Path.is_file, candidates):
        if identity is None or file_identity(candidate) == identity:
            return str(candidate)
        changed = changed or candidate
    if changed:
        raise ConfigError(f"{changed} changed since {run_dir} was trained on it (its size or SHA-256 differs): "
                          f"a run is a function of its data; put the original back, pass it with {flag} FILE, "
                          "or start a new run on the new data")
    raise ConfigError(f"{run_dir}: its {key.replace('_', ' ')} file {recorded} is gone (looked there, from the "
                      f"run folder and beside it); pass it with {flag} FILE")
