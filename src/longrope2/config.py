"""Load experiment config files (later ones override earlier ones), validate them against the schema,
and cut out the subset of keys one stage reads.

Snakemake (Snakefile) and the CLI both go through :func:`validate`, so a bad value fails the same way in
both: one line naming the key and what is allowed, before any work is done. Each stage declares the
keys it reads (``CONFIG_KEYS``); :func:`subset` extracts exactly those, so a rule's ``params`` (the
rerun trigger) and what the stage is given are the same object.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError


def schema() -> dict:
    """The JSON schema, with the method-name enums filled from the one method registry."""
    from . import methods

    sch = yaml.safe_load(resources.files("longrope2").joinpath("schemas/config.schema.yaml").read_text())
    props = sch["properties"]
    props["extension"]["properties"]["methods"]["items"]["enum"] = methods.EXTENSION_METHODS
    props["finetune"]["properties"]["methods"]["items"]["enum"] = methods.EXTENSION_METHODS
    props["search"]["properties"]["methods"]["items"]["enum"] = methods.SEARCHED_METHODS
    props["evaluation"]["properties"]["ruler"]["properties"]["training_free"]["items"]["enum"] = list(methods.REGISTRY)
    return sch


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
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError("--config", f"{p} is not valid YAML ({getattr(e, 'problem', None) or e}{where})") from None
        except UnicodeDecodeError:
            raise ConfigError("--config", f"{p} is not UTF-8 text") from None
        if not isinstance(data, Mapping):
            raise ConfigError("--config", f"{p} must hold a mapping of sections at the top level, got {type(data).__name__}")
        cfg = deep_merge(cfg, data)
    return cfg


def _fill_defaults(node: Any, sch: Mapping) -> Any:
    """Fill schema defaults and write every ``number`` as a float, so 10000 and 10000.0 are one value
    (a rule's params compare the JSON text: restating a value must not rerun anything)."""
    types = sch.get("type") if isinstance(sch.get("type"), list) else [sch.get("type")]  # [object, "null"]: optional
    if "object" in types and isinstance(node, dict):
        for key, sub in sch.get("properties", {}).items():
            if key not in node and "default" in sub:
                node[key] = copy.deepcopy(sub["default"])
            if key in node:
                node[key] = _fill_defaults(node[key], sub)
    elif "array" in types and isinstance(node, list) and isinstance(sch.get("items"), Mapping):
        return [_fill_defaults(x, sch["items"]) for x in node]
    elif sch.get("type") == "number" and isinstance(node, int) and not isinstance(node, bool):
        return float(node)
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


def _check_finite(node: Any, path: str = "") -> None:
    """JSON schema's ``number`` admits NaN and infinity (YAML ``.nan``/``.inf``); no config value may be one."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(path or "<config>", f"must be a finite number, got {node}")
    if isinstance(node, Mapping):
        for k, v in node.items():
            _check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{path}.{i}")


def validate(cfg: dict) -> dict:
    """Validate in place (filling schema defaults) and check cross-field rules; returns cfg."""
    import jsonschema

    from . import methods

    if not isinstance(cfg, Mapping):
        raise ConfigError("<config>", f"must be a mapping of sections (experiment, model, ...), got {type(cfg).__name__}")
    _check_finite(cfg)
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
    evaluation_lengths(cfg)
    ext = cfg["extension"]
    if "fixed_factors" in ext["methods"]:
        from . import published

        published.check(ext["fixed_factors"], cfg["model"]["geometry"], ext["target_length"])
    if methods.AS_IS in ext["methods"] and ext["as_is"] is None and cfg["model"]["source"] == "scale":
        raise ConfigError("extension.as_is", "the scale model has no rope scaling of its own; name the already-extended "
                                             "checkpoint as_is evaluates ({source: hub|local|gguf, id: ...})")
    runnable = methods.training_free(cfg)
    for i, m in enumerate(cfg["finetune"]["methods"]):
        if m not in runnable:
            raise ConfigError(f"finetune.methods.{i}", f"got {m!r}, which this experiment does not build; allowed: "
                              f"{', '.join(x for x in runnable if x in methods.EXTENSION_METHODS)} (add it to extension.methods)")
    methods.ruler_training_free(cfg)  # every name a training-free row of this experiment
    return cfg


def evaluation_lengths(cfg: Mapping) -> list[int]:
    """RULER / NIAH / passkey lengths: ``evaluation.lengths``, or L0/2, L0, 2*L0 and the target. None may
    exceed the target: no method is extended (or fine-tuned) beyond it."""
    l0, target = cfg["model"]["geometry"]["original_length"], cfg["extension"]["target_length"]
    given = cfg["evaluation"]["lengths"]
    lengths = sorted(set(given)) if given is not None else sorted({l0 // 2, l0, min(2 * l0, target), target})
    if not lengths:
        raise ConfigError("evaluation.lengths", f"is empty; give lengths up to the target {target}, or null for the default")
    above = [L for L in lengths if L > target]
    if above:
        raise ConfigError("evaluation.lengths", f"{above[0]} is above what any method supports; allowed: lengths up to "
                          f"extension.target_length={target}")
    return lengths


def load(paths: Iterable[str | Path]) -> dict:
    return validate(load_files(paths))


def _get(cfg: Mapping, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(key, "is missing from the config")
        node = node[part]
    return node


def subset(cfg: Mapping, keys: Iterable[str]) -> dict:
    """The nested dict holding only ``keys`` (dotted paths) of a validated config: what one stage reads."""
    out: dict = {}
    for key in keys:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(_get(cfg, key))
    return out


def subset_json(cfg: Mapping, keys: Iterable[str]) -> str:
    """A stage's config subset as canonical JSON: the rule's params value and the CLI's --config-json."""
    return json.dumps(subset(cfg, keys), sort_keys=True, separators=(",", ":"))


def _sub_schema(sch: Mapping, key: str) -> Mapping:
    for part in key.split("."):
        sch = sch["properties"][part]
    return sch


def validate_subset(sub: Any, keys: Iterable[str]) -> dict:
    """Check a subset given as JSON (a rule's ``--config-json``): exactly the declared keys, each valid
    against its part of the schema (defaults filled), plus the cross-field rules that apply to it."""
    import jsonschema

    keys = list(keys)
    if not isinstance(sub, Mapping):
        raise ConfigError("--config-json", f"must be a JSON object, got {type(sub).__name__}")
    try:
        declared = subset(sub, keys)
    except ConfigError as e:
        raise ConfigError("--config-json", f"missing key {e.key}; this stage reads: {', '.join(keys)}") from None
    if declared != sub:
        raise ConfigError("--config-json", f"holds keys this stage does not read; it reads: {', '.join(keys)}")
    _check_finite(sub)
    sch = schema()
    for key in keys:
        part = _sub_schema(sch, key)
        errors = sorted(jsonschema.Draft202012Validator(part).iter_errors(_get(sub, key)), key=lambda e: len(e.absolute_path))
        if errors:
            err = jsonschema.exceptions.best_match(errors)
            described = _describe(err)
            raise ConfigError(".".join([key, *map(str, err.absolute_path)]), str(described).split(": ", 1)[1])
        _fill_defaults(_get(sub, key), part)
    geom = sub.get("model", {}).get("geometry", {})
    target = sub.get("extension", {}).get("target_length")
    l0 = geom.get("original_length") if isinstance(geom, Mapping) else None
    if l0 is not None and target is not None and target <= l0:
        raise ConfigError("extension.target_length", f"must be above model.geometry.original_length={l0}, got {target}")
    return dict(sub)


def stage_config(keys: Iterable[str], files: Iterable[str | Path] | None = None, json_text: str | None = None) -> dict:
    """What a stage is given: the declared subset of the validated config files, or of a JSON subset."""
    if json_text is not None:
        try:
            data = json.loads(json_text)
        except json.JSONDecodeError as e:
            raise ConfigError("--config-json", f"not valid JSON ({e.msg} at character {e.pos})") from None
        return validate_subset(data, keys)
    return subset(load(files or []), keys)


def config_hash(subset: Any) -> str:
    """Stable short hash of a JSON-able config subset (key order does not matter)."""
    blob = json.dumps(subset, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def geometry(cfg: Mapping):
    from .rope import RopeGeometry

    return RopeGeometry.from_mapping(cfg["model"]["geometry"])
