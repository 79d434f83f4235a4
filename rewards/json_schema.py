"""JSON Schema conformance: 1.0 if the completion (strict JSON) validates against the item's schema.

The schema comes with the request, so it is hostile input too. Bounds, each a verdict or an error, never
a hang or a fetch:
- no remote ``$ref``: the validator's registry refuses every retrieval (jsonschema would otherwise fetch
  ``http(s)`` references);
- size and depth of schema and instance are checked before validating;
- time: every keyword checks a per-item deadline; ``pattern`` / ``patternProperties`` use the ``regex``
  package with a timeout (the standard ``re`` can backtrack for ever while holding the GIL, which would
  freeze the whole service); ``uniqueItems`` is hashed in O(n) instead of jsonschema's O(n^2) fallback.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import regex
from jsonschema import exceptions as js_exceptions
from jsonschema import validators
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.exceptions import NoSuchResource, Unresolvable

from rewards.base import ERROR, OK, TIMEOUT, Item, Result
from rewards.json_valid import JsonRejected, _depth, extract_fenced, parse_strict

_local = threading.local()


class _OutOfTime(Exception):
    pass


def _refuse(uri: str):
    # Nothing named in a request is fetched.
    raise NoSuchResource(ref=uri)


_REGISTRY = Registry(retrieve=_refuse)


def _check_time():
    if time.monotonic() > _local.deadline:
        raise _OutOfTime


def _search(pattern: str, text: str) -> bool:
    left = _local.deadline - time.monotonic()
    if left <= 0:
        raise _OutOfTime
    try:
        return regex.search(pattern, text, timeout=left, concurrent=True) is not None
    except TimeoutError:
        raise _OutOfTime from None


def _pattern(validator, patrn, instance, schema):
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{instance[:100]!r} does not match {patrn[:100]!r}")


def _pattern_properties(validator, pattern_properties, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in pattern_properties.items():
        for k, v in instance.items():
            if _search(patrn, k):
                yield from validator.descend(v, subschema, path=k, schema_path=patrn)


def _canonical(value):
    """Hashable form with JSON Schema equality: 1 == 1.0, but true != 1 and key order does not matter."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, dict):
        return ("o", frozenset((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("a", tuple(_canonical(v) for v in value))
    return ("?", repr(value))


def _unique_items(validator, unique, instance, schema):
    if unique and validator.is_type(instance, "array"):
        seen = set()
        for v in instance:
            key = _canonical(v)
            if key in seen:
                yield ValidationError(f"array has non-unique elements ({json.dumps(v)[:100]})")
                return
            seen.add(key)


def _timed(fn):
    def keyword(validator, value, instance, schema):
        _check_time()
        errors = fn(validator, value, instance, schema)
        if errors is not None:
            yield from errors
    return keyword


@lru_cache(maxsize=None)
def _bounded(base):
    """``base`` validator class with a deadline on every keyword and safe regex/uniqueItems."""
    kw = {name: _timed(fn) for name, fn in base.VALIDATORS.items()}
    if "pattern" in kw:
        kw["pattern"] = _timed(_pattern)
    if "patternProperties" in kw:
        kw["patternProperties"] = _timed(_pattern_properties)
    if "uniqueItems" in kw:
        kw["uniqueItems"] = _timed(_unique_items)
    return validators.extend(base, kw)


@dataclass
class JsonSchemaScorer:
    """1.0 if the completion is strict JSON that conforms to ``item.reference`` (a schema: dict or JSON
    text), else 0.0 with the first errors in ``details``. An unusable schema (invalid, too big, a remote
    ``$ref``) is an ``error`` (score None): the completion is not at fault.

    Options: ``fenced``, ``allow_nan``, ``allow_duplicate_keys`` (as for json_valid), ``max_schema_chars``,
    ``max_instance_chars``, ``max_depth``, ``time_limit_s`` (per item).
    """

    fenced: bool = False
    allow_nan: bool = False
    allow_duplicate_keys: bool = False
    max_schema_chars: int = 100_000
    max_instance_chars: int = 100_000
    max_depth: int = 64
    time_limit_s: float = 1.0
    name: str = "json_schema"

    def score(self, items: list[Item]) -> list[Result]:
        return [self._one(it) for it in items]

    def __post_init__(self):
        # Checking a schema against its meta-schema costs far more than validating one instance, and a batch
        # usually shares one schema: keep the last few compiled validators, keyed by the schema's JSON text.
        self._cache: dict[str, object] = {}
        self._cache_lock = threading.Lock()

    def _schema(self, ref):
        key = ref if isinstance(ref, str) else None
        if key is None:
            try:
                key = json.dumps(ref, sort_keys=True)
            except (TypeError, ValueError, RecursionError):
                raise ValueError("reference schema is not JSON-serialisable") from None
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        validator = self._compile(ref)
        with self._cache_lock:
            if len(self._cache) >= 64:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = validator
        return validator

    def _compile(self, ref):
        if isinstance(ref, str):
            try:
                ref = parse_strict(ref, False, False, self.max_schema_chars, self.max_depth)
            except JsonRejected as e:
                raise ValueError(f"reference schema is not JSON: {e}") from None
        if not isinstance(ref, (dict, bool)):
            raise ValueError(f"reference must be a JSON Schema (object or boolean), got {type(ref).__name__}")
        size = len(json.dumps(ref))
        if size > self.max_schema_chars:
            raise ValueError(f"schema of {size} characters exceeds max_schema_chars={self.max_schema_chars}")
        if _depth(ref) > self.max_depth:
            raise ValueError(f"schema nesting exceeds max_depth={self.max_depth}")
        base = validators.validator_for(ref, default=validators.Draft202012Validator)
        try:
            base.check_schema(ref)
        except js_exceptions.SchemaError as e:
            raise ValueError(f"invalid schema: {e.message[:300]}") from None
        return _bounded(base)(ref, registry=_REGISTRY)

    def _one(self, item: Item) -> Result:
        if not isinstance(item.completion, str):
            return Result(None, ERROR, {"reason": "completion is not a string"})
        _local.deadline = time.monotonic() + self.time_limit_s
        try:
            validator = self._schema(item.reference)
        except (ValueError, RecursionError) as e:
            return Result(None, ERROR, {"reason": str(e)[:500]})
        except _OutOfTime:
            return Result(None, TIMEOUT, {"reason": f"schema check exceeded {self.time_limit_s:g} s"})
        text = extract_fenced(item.completion) if self.fenced else item.completion
        try:
            instance = parse_strict(text, self.allow_nan, self.allow_duplicate_keys, self.max_instance_chars,
                                    self.max_depth)
        except JsonRejected as e:
            return Result(0.0, OK, {"valid": False, "reason": f"not JSON: {e}"})
        try:
            errors = []
            for err in validator.iter_errors(instance):
                errors.append(f"{'/'.join(map(str, err.absolute_path)) or '<root>'}: {err.message[:200]}")
                if len(errors) == 3:
                    break
        except _OutOfTime:
            return Result(None, TIMEOUT, {"reason": f"validation exceeded {self.time_limit_s:g} s"})
        except Unresolvable as e:
            return Result(None, ERROR, {"reason": f"unresolvable $ref (remote references are never fetched): "
                                                  f"{str(e)[:200]}"})
        except (RecursionError, regex.error) as e:
            return Result(None, ERROR, {"reason": f"schema could not be applied: {type(e).__name__}: {str(e)[:200]}"})
        if errors:
            return Result(0.0, OK, {"valid": False, "errors": errors})
        return Result(1.0, OK, {"valid": True})
