"""Config files and command-line overrides.

A config is a python file with `get_config() -> ml_collections.ConfigDict` (see configs/).
Launch scripts take `--config=configs/x.py --config.a.b=value ...`; every override must name
an existing key and parse as that key's type, so a typo fails at start-up, not hours into a
run with a silently ignored flag. The returned config is locked for the same reason.
"""
import ast
import difflib
import hashlib
import importlib.util
import os
import sys
from typing import Any, Sequence

import ml_collections

_PREFIX = "--config."


class ConfigError(ValueError):
  """A config file or override that cannot be applied; the message names the key."""


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `get_config()` from the python file at `path`, applies overrides and locks it.

  Args:
    path: a config file such as "configs/tiny.py". Modules beside it (configs/_*.py)
      can be imported by name from it.
    overrides: "a.b=value" or "--config.a.b=value" strings, applied in order.

  Returns:
    The locked config: existing fields can still be set, new ones cannot be added.
  """
  config = _get_config(os.fspath(path))
  for override in overrides:
    apply_override(config, override)
  config.lock()
  return config


def parse_argv(argv: Sequence[str], default_config: str | None = None
               ) -> tuple[str, list[str], list[str]]:
  """Splits launch-script arguments into (config path, overrides, everything else).

  Args:
    argv: arguments without the program name, i.e. `sys.argv[1:]`. Understands
      `--config=PATH`, `--config PATH`, `--config.a.b=V` and `--config.a.b V`; everything
      after a bare `--` goes to the rest untouched.
    default_config: used when argv has no --config; without it --config is required.

  Returns:
    The config path, the overrides as "a.b=V" strings (ready for `load_config`), and the
    remaining arguments in their original order.
  """
  path, overrides, rest = None, [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    i += 1
    if arg == "--":
      rest.extend(args[i:])
      break
    if arg == "--config" or arg.startswith("--config=") or arg.startswith(_PREFIX):
      name, has_value, value = arg.partition("=")
      if not has_value:
        if i == len(args):
          raise ConfigError(f"{name} needs a value")
        value = args[i]
        i += 1
      if name == "--config":
        if path is not None:
          raise ConfigError(f"--config given twice: {path!r} and {value!r}")
        path = value
      else:
        overrides.append(f"{name[len(_PREFIX):]}={value}")
    else:
      rest.append(arg)
  if path is None:
    if default_config is None:
      raise ConfigError("missing --config=path/to/config.py")
    path = default_config
  return path, overrides, rest


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets one "a.b=value" (or "--config.a.b=value") on `config`, parsed by the key's type."""
  key, has_value, raw = override.partition("=")
  if key.startswith(_PREFIX):
    key = key[len(_PREFIX):]
  elif key.startswith("-"):
    raise ConfigError(f"override {override!r}: expected --config.a.b=value or a.b=value")
  if not has_value or not key:
    raise ConfigError(f"override {override!r}: expected a.b=value")
  parts = key.split(".")
  node = config
  for depth, part in enumerate(parts):
    where = ".".join(parts[:depth])
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"config key {key!r}: {where!r} is a {type(node).__name__} value, "
                        "not a group of keys")
    if part not in node:
      raise ConfigError(_unknown_key_message(key, where, node, part))
    if depth < len(parts) - 1:
      node = node[part]
  leaf = parts[-1]
  node[leaf] = _parse_value(key, raw, node[leaf], node.get_type(leaf))


def _get_config(path: str) -> ml_collections.ConfigDict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path!r}")
  # A name unique per file, so two configs with the same basename do not collide.
  digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
  name = f"_zwz_config_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  directory = os.path.dirname(os.path.abspath(path))
  sys.path.insert(0, directory)  # lets a config import shared helpers beside it
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(directory)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path!r} defines no get_config()")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, "
                      "expected ml_collections.ConfigDict")
  return config


def _unknown_key_message(key: str, where: str, node: ml_collections.ConfigDict,
                         part: str) -> str:
  valid = sorted(node.keys())
  scope = f"under {where}" if where else "at the top level"
  message = f"unknown config key {key!r} (valid keys {scope}: {', '.join(valid)})"
  close = difflib.get_close_matches(part, valid, n=1)
  if close:
    message += f"; did you mean {'.'.join(filter(None, [where, close[0]]))!r}?"
  return message


def _parse_value(key: str, raw: str, current: Any, field_type: type) -> Any:
  """`raw` converted to the type of the field it replaces."""
  def fail(expected):
    return ConfigError(f"config key {key!r} expects {expected}, got {raw!r}")

  if field_type is None or field_type is type(None):
    # An unset field takes any python literal, else the plain string.
    try:
      return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      return raw
  if issubclass(field_type, ml_collections.ConfigDict):
    raise ConfigError(f"config key {key!r} is a group of keys ({', '.join(sorted(current))}); "
                      "set its fields one by one")
  if field_type is bool:
    word = raw.strip().lower()
    if word in ("true", "1"):
      return True
    if word in ("false", "0"):
      return False
    raise fail("a bool (true/false/1/0)")
  if field_type is int:
    try:
      return int(raw)
    except ValueError:
      raise fail("an int") from None
  if field_type is float:
    try:
      return float(raw)
    except ValueError:
      raise fail("a float") from None
  if field_type is str:
    return raw
  if field_type in (tuple, list):
    return _parse_sequence(key, raw, current, field_type, fail)
  if field_type is dict:
    value = _literal(raw, fail, "a dict literal")
    if not isinstance(value, dict):
      raise fail("a dict literal")
    return value
  raise ConfigError(f"config key {key!r} has type {field_type.__name__}, "
                    "which cannot be set from the command line")


def _parse_sequence(key, raw, current, field_type, fail):
  if _is_bare_string(raw, current):
    return field_type((raw,))  # a path for a tuple of paths: --config.data.train=/data/records
  value = _literal(raw, fail, f"a {field_type.__name__} literal such as (1, 2)")
  if not isinstance(value, (tuple, list)):
    value = (value,)  # "7" for a one-element tuple
  # Keep element types consistent with the default: ints widen to floats, nothing else.
  kinds = {type(x) for x in current}
  if len(kinds) == 1 and current:
    kind = kinds.pop()
    converted = []
    for x in value:
      if kind is float and type(x) is int:
        x = float(x)
      if type(x) is not kind:
        raise ConfigError(f"config key {key!r} expects {kind.__name__} elements, got {raw!r}")
      converted.append(x)
    value = converted
  return field_type(value)


def _is_bare_string(raw, current) -> bool:
  """True for an unquoted word where a tuple of strings (or an empty tuple) is expected."""
  if current and not all(isinstance(x, str) for x in current):
    return False
  try:
    ast.literal_eval(raw)
    return False
  except (ValueError, SyntaxError):
    return bool(raw) and raw[0] not in "([{'\""


def _literal(raw, fail, expected):
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise fail(expected) from None
