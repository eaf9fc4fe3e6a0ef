"""Load experiment config files (later ones override earlier ones) and validate them against the schema.

Snakemake (Snakefile) and the CLI both go through :func:`validate`, so a bad value fails the same way in
both: one line naming the key and what is allowed, before any work is done.
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError


def schema() -> dict:
    return yaml.safe_load(resources.files("longrope2").joinpath("schemas/config.schema.yaml").read_text())


def deep_merge(base: dict, override: Mapping) -> dict:
    """Recursive dict update, the same rule Snakemake applies to successive --configfile files."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_files(paths: Iterable[str | Path]) -> dict:
    cfg: dict = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ConfigError("--config", f"file {str(p)!r} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, Mapping):
            raise ConfigError("--config", f"{p} must hold a mapping at the top level")
        cfg = deep_merge(cfg, data)
    return cfg


def _fill_defaults(node: Any, sch: Mapping) -> Any:
    if sch.get("type") == "object" and isinstance(node, dict):
        for key, sub in sch.get("properties", {}).items():
            if key not in node and "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            if key in node:
                node[key] = _fill_defaults(node[key], sub)
    return node


def _describe(err) -> ConfigError:
    path = ".".join(str(p) for p in err.absolute_path) or "<config>"
    v, sch = err.validator, err.schema
    if v == "enum":
        return ConfigError(path, f"got {err.instance!r}; allowed: {', '.join(map(str, sch['enum']))}")
    if v == "additionalProperties":
        extra = sorted(set(err.instance) - set(sch.get("properties", {})))
        return ConfigError(
            f"{path}.{extra[0]}" if path != "<config>" else extra[0],
            f"unknown key; allowed keys here: {', '.join(sch.get('properties', {}))}",
        )
    if v == "required":
        missing = [k for k in sch["required"] if k not in err.instance]
        key = f"{path}.{missing[0]}" if path != "<config>" else missing[0]
        return ConfigError(key, "is required")
    if v == "type":
        return ConfigError(path, f"must be of type {sch['type']}, got {err.instance!r}")
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return ConfigError(path, f"got {err.instance!r}; must be {v} {sch[v]}")
    if v == "pattern":
        return ConfigError(path, f"got {err.instance!r}; must match {sch['pattern']}")
    return ConfigError(path, err.message)


def validate(cfg: dict) -> dict:
    """Validate in place (filling schema defaults) and check cross-field rules; returns cfg."""
    import jsonschema

    sch = schema()
    validator = jsonschema.Draft202012Validator(sch)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise _describe(jsonschema.exceptions.best_match(errors))
    _fill_defaults(cfg, sch)
    l0 = cfg["model"]["geometry"]["original_length"]
    if cfg["extension"]["target_length"] <= l0:
        raise ConfigError(
            "extension.target_length",
            f"must be above model.geometry.original_length={l0}, got {cfg['extension']['target_length']}",
        )
    # LongRoPE2's search gives d_rcd to the rcd baselines; LongRoPE v1 is searched when compared
    needed = {"longrope2"} | ({"longrope"} & set(cfg["extension"]["methods"]))
    missing = sorted(needed - set(cfg["search"]["methods"]))
    if missing:
        raise ConfigError("search.methods", f"must include {', '.join(missing)} (needed by extension.methods and the rcd baselines)")
    return cfg


def load(paths: Iterable[str | Path]) -> dict:
    return validate(load_files(paths))


def config_hash(subset: Any) -> str:
    """Stable short hash of a JSON-able config subset (key order does not matter)."""
    blob = json.dumps(subset, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def geometry(cfg: Mapping):
    from .rope import RopeGeometry

    return RopeGeometry.from_mapping(cfg["model"]["geometry"])
