"""Config files and their command-line overrides, read by ml_collections.config_flags.

A config is a python file with `get_config() -> ml_collections.ConfigDict` (configs/; shared pieces
are imported from the `configs` package). A launcher declares the flag and parses with it:

  CONFIG = config.ConfigFlag("configs/tiny.py")   # --config=configs/x.py --config.a.b=value ...
  app.run(main, flags_parser=CONFIG.parse_or_exit)  # then CONFIG.value in main

The file is loaded once, here; config_flags (DEFINE_config_dict) parses each override by its
field's type and locks the config. Kept here, because config_flags does neither: every override key is checked before parsing (a typo
is one line naming the whole key, its valid siblings and the closest, not an AttributeError
traceback), and tuple elements must have the default's type (ints widen to floats).
`load_config(path, overrides)` is the same parse for tests, benchmarks and the demo.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import re
import sys
from typing import Sequence

import ml_collections
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

_EXPECTS = {int: "an int", float: "a float", bool: "a bool (true/false/1/0)", str: "a string",
            tuple: "a tuple literal such as (1, 2)"}


class ConfigError(ValueError, flags.Error):
  """A config file or override that cannot be applied; the message names the key. A flags.Error,
  so absl's app.run reports it in one line."""


class ConfigFlag:
  """`--config=FILE` (default `default`; None: required) and its `--config.a.b=value` overrides."""

  def __init__(self, default: str | None, *, flag_values: flags.FlagValues = flags.FLAGS):
    self.default, self._flag_values = default, flag_values
    self.path = None  # the config file, once parsed
    self._holder = None  # the config flag, defined by `parse` once the file is loaded

  @property
  def value(self) -> ml_collections.ConfigDict:
    if self._holder is None:
      raise RuntimeError("the config is read before its flags are parsed")
    return self._holder.value

  def parse(self, argv: Sequence[str]) -> list[str]:
    """absl `flags_parser`: parses argv (program name first), returns the positional arguments."""
    path, keys, others = _scan(argv[1:], self.default)
    if not path:
      raise ConfigError("missing --config=path/to/config.py")
    if self._holder is not None:
      raise RuntimeError("a ConfigFlag parses once")
    config = _load(path)
    self.path = path
    base = config.copy_and_resolve_references()  # the defaults, as the overrides leave `config` changed
    for key in keys:
      _field_type(base, key)
    # config_flags reads the overrides from this argv when the flag is defined, and then parses them
    # by the types of the config's fields.
    argv = [argv[0], *others]
    self._holder = config_flags.DEFINE_config_dict(
        "config", config, f"{path}; override keys with --config.a.b=value",
        flag_values=self._flag_values, lock_config=True, sys_argv=argv)
    try:
      rest = self._flag_values(argv)
    except flags.IllegalFlagValueError as e:
      raise _value_error(base, str(e)) from None
    if self._flag_values is flags.FLAGS and not flags.FLAGS["verbosity"].present:
      # app.run logs at INFO: keep the libraries' INFO lines (jax, orbax) for --verbosity=0.
      absl_logging.set_verbosity(absl_logging.WARNING)
    overrides = config_flags.get_override_values(self._flag_values["config"])
    for key, value in overrides.items():
      if isinstance(value, tuple):
        _set_path(self.value, key, _typed_tuple(key, value, _get_path(base, key)))
    return rest

  def parse_or_exit(self, argv: Sequence[str]) -> list[str]:
    """`parse` for absl's app.run: a bad flag, config file or key exits with status 2 and one line."""
    try:
      return self.parse(argv)
    except (flags.Error, FileNotFoundError) as e:
      sys.stderr.write(f"error: {e}\n")
      sys.exit(2)


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config file at `path` with overrides ("a.b=value" or "--config.a.b=value") applied, locked."""
  argv = ["load_config", f"--config={os.fspath(path)}"]
  for override in overrides:
    m = re.fullmatch(r"(?:--config\.)?([A-Za-z_][\w.]*)=(.*)", override, re.S)
    if not m:
      raise ConfigError(f"override {override!r}: expected a.b=value or --config.a.b=value")
    argv.append(f"--config.{m.group(1)}={m.group(2)}")
  flag = ConfigFlag(os.fspath(path), flag_values=flags.FlagValues())
  try:
    flag.parse(argv)
  except flags.Error as e:
    raise e if isinstance(e, ConfigError) else ConfigError(str(e)) from None
  return flag.value


def _scan(args: Sequence[str], default: str) -> tuple[str, list[str], list[str]]:
  """(config path, override keys, the arguments but --config) of launcher arguments."""
  path, keys, others = default, [], []
  args = list(args)
  while args:
    arg = args.pop(0)
    if arg == "--":
      others += [arg, *args]
      break
    if arg == "--config" and args:
      path = args.pop(0)
      continue
    if arg.startswith("--config="):
      path = arg.partition("=")[2]
      continue
    if arg.startswith("--config."):
      keys.append(arg[len("--config."):].partition("=")[0])
    others.append(arg)
  return path, keys, others


def _load(path: str) -> ml_collections.ConfigDict:
  """The file's get_config(), unlocked."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path!r}")
  name = "_zwz_config_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path!r} defines no get_config()")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() returned {type(config).__name__}, expected ml_collections.ConfigDict")
  return config


def _field_type(config: ml_collections.ConfigDict, key: str) -> type:
  """The type of field `key` ("a.b.c"); a ConfigError naming the key if there is no such field."""
  parts, node = key.split("."), config
  for depth, part in enumerate(parts):
    where = ".".join(parts[:depth])
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"config key {key!r}: {where!r} is a {type(node).__name__} value, not a group of keys")
    if part not in node:
      valid = sorted(node.keys())
      scope = f"under {where}" if where else "at the top level"
      message = f"unknown config key {key!r} (valid keys {scope}: {', '.join(valid)})"
      close = difflib.get_close_matches(part, valid, n=1)
      if close:
        message += f"; did you mean {'.'.join(filter(None, [where, close[0]]))!r}?"
      raise ConfigError(message)
    if depth < len(parts) - 1:
      node = node[part]
  if isinstance(node[parts[-1]], ml_collections.ConfigDict):
    raise ConfigError(f"config key {key!r} is a group of keys ({', '.join(sorted(node[parts[-1]]))}); "
                      "set its fields one by one")
  return node.get_type(parts[-1])


def _get_path(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


def _set_path(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  for part in parents:
    config = config[part]
  config[leaf] = value


def _value_error(base, message: str) -> ConfigError:
  """absl's "flag --config.a.b=v: reason" as a ConfigError naming the key and what it expects."""
  m = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", message, re.S)
  if not m:
    return ConfigError(message)
  key, raw, reason = m.groups()
  expects = _EXPECTS.get(_field_type(base, key), "another value")
  return ConfigError(f"config key {key!r} expects {expects}, got {raw!r} ({reason.splitlines()[0]})")


def _typed_tuple(key: str, value: tuple, default: tuple) -> tuple:
  """`value` with the elements of `default`'s one type (ints widen to floats), or a ConfigError."""
  kinds = {type(x) for x in default}
  if len(kinds) != 1:
    return value
  kind = kinds.pop()
  out = tuple(float(x) if kind is float and type(x) is int else x for x in value)
  if any(type(x) is not kind for x in out):
    raise ConfigError(f"config key {key!r} expects a tuple of {kind.__name__} elements, got {value!r}")
  return out
