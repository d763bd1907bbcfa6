"""Config files load, share one schema, and overrides fail loudly on typos and bad values."""
import pathlib

import ml_collections
import pytest
from absl import flags

from zwz_jax import config as config_lib

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = sorted(p for p in CONFIGS_DIR.glob("*.py") if not p.name.startswith("_"))
# Student (training/model) configs share their family's tiny schema; datagen_* configs and the
# demo's (which names the configs of its stages) have their own.
STUDENT_FILES = [p for p in CONFIG_FILES if not p.name.startswith(("datagen_", "eval_")) and p.name != "demo.py"]
EVAL_FILES = [p for p in CONFIG_FILES if p.name.startswith("eval_")]
TINY = str(CONFIGS_DIR / "tiny.py")
FAMILY_TINY = {"qwen2_5_vl": TINY, "qwen3_vl": str(CONFIGS_DIR / "tiny_qwen3.py")}


def _flat_types(config, prefix=""):
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat_types(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = type(value)
  return out


def test_config_files_found():
  names = {p.name for p in CONFIG_FILES}
  assert {"tiny.py", "student_3b.py", "student_7b.py", "student_32b.py",
          "student_72b.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_loads(path):
  assert config_lib.load_config(str(path))


def _student_schema(config):
  """Key -> type of a config, its optional eval section left out."""
  return {k: t for k, t in _flat_types(config).items() if not k.startswith("eval.")}


@pytest.mark.parametrize("path", STUDENT_FILES, ids=lambda p: p.stem)
def test_every_config_loads_with_the_tiny_schema(path):
  config = config_lib.load_config(str(path))
  tiny = config_lib.load_config(FAMILY_TINY[config.model.name])
  assert _student_schema(config) == _student_schema(tiny)


@pytest.mark.parametrize("path", EVAL_FILES, ids=lambda p: p.stem)
def test_eval_configs_are_a_student_config_plus_eval(path):
  config = config_lib.load_config(str(path))
  flat = _flat_types(config)
  student = {k: t for k, t in flat.items() if not k.startswith("eval.")}
  assert student == _student_schema(config_lib.load_config(FAMILY_TINY[config.model.name]))
  assert {"eval.benchmarks", "eval.batch_size", "eval.coverage_layer"} <= set(flat)


@pytest.mark.parametrize("path", STUDENT_FILES + EVAL_FILES, ids=lambda p: p.stem)
def test_every_config_is_consistent(path):
  c = config_lib.load_config(str(path))
  v, t = c.model.vision, c.model.text
  assert t.num_heads % t.num_kv_heads == 0 and v.hidden_size % v.num_heads == 0
  if c.model.name == "qwen3_vl":
    assert 2 * sum(t.mrope_section) == t.head_dim
    assert all(0 <= i < v.depth for i in v.deepstack_visual_indexes)
    assert len(v.deepstack_visual_indexes) < t.num_layers
  else:
    assert t.hidden_size % t.num_heads == 0 and 2 * sum(t.mrope_section) == t.hidden_size // t.num_heads
    assert all(0 <= i < v.depth for i in v.fullatt_block_indexes)
    assert v.window_size % (v.patch_size * v.spatial_merge_size) == 0
  assert v.out_hidden_size == t.hidden_size
  assert c.processor.min_pixels <= c.processor.max_pixels
  special = (c.model.image_token_id, c.model.video_token_id, c.model.vision_start_token_id,
             c.model.vision_end_token_id)
  assert len(set(special)) == 4 and max(special) < t.vocab_size


# Qwen's fine-tuning cap (1280 merged tokens per image); the 7B trains at the paper's resolution.
QWEN_CAP, PAPER = 28 * 28 * 1280, 16777216


@pytest.mark.parametrize("name,hidden,layers,heads,kv,mlp,vocab,tied,max_pixels", [
    ("student_3b", 2048, 36, 16, 2, 11008, 151936, True, QWEN_CAP),
    ("student_7b", 3584, 28, 28, 4, 18944, 152064, False, PAPER),
    ("student_32b", 5120, 64, 40, 8, 27648, 152064, False, QWEN_CAP),
    ("student_72b", 8192, 80, 64, 8, 29568, 152064, False, QWEN_CAP),
])
def test_published_qwen2_5_vl_sizes(name, hidden, layers, heads, kv, mlp, vocab, tied, max_pixels):
  c = config_lib.load_config(str(CONFIGS_DIR / f"{name}.py"))
  t, v = c.model.text, c.model.vision
  assert (t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.intermediate_size,
          t.vocab_size, t.tie_word_embeddings) == (hidden, layers, heads, kv, mlp, vocab, tied)
  assert t.mrope_section == (16, 24, 24) and t.rope_theta == 1e6 and t.rms_norm_eps == 1e-6
  assert t.max_position_embeddings == 128000
  assert (v.depth, v.hidden_size, v.num_heads, v.intermediate_size, v.window_size) == (
      32, 1280, 16, 3420, 112)
  assert v.fullatt_block_indexes == (7, 15, 23, 31) and v.out_hidden_size == hidden
  assert (c.model.image_token_id, c.model.video_token_id, c.model.vision_start_token_id,
          c.model.vision_end_token_id) == (151655, 151656, 151652, 151653)
  assert c.processor.max_pixels == max_pixels
  assert (c.model.dtype, c.model.param_dtype) == ("bfloat16", "float32")


def test_overrides_parse_by_field_type():
  c = config_lib.load_config(TINY, [
      "seed=7",                                   # int
      "--config.model.text.rope_theta=5e5",       # float, with the launch-script prefix
      "model.text.tie_word_embeddings=true",      # bool
      "model.vision.fullatt_block_indexes=(0, 2)",  # tuple
      "model.dtype=bfloat16",                     # str
      "processor.image_mean=(0, 1, 0.5)",          # ints widen to floats
      "processor.tokenizer=a=b.json",             # only the first '=' splits
  ])
  assert c.seed == 7 and isinstance(c.seed, int)
  assert c.model.text.rope_theta == 5e5
  assert c.model.text.tie_word_embeddings is True
  assert c.model.vision.fullatt_block_indexes == (0, 2)
  assert c.model.dtype == "bfloat16"
  assert c.processor.image_mean == (0.0, 1.0, 0.5)
  assert all(isinstance(x, float) for x in c.processor.image_mean)
  assert c.processor.tokenizer == "a=b.json"


@pytest.mark.parametrize("raw,expected", [("false", False), ("0", False), ("True", True),
                                          ("1", True)])
def test_bool_spellings(raw, expected):
  c = config_lib.load_config(TINY, [f"model.text.tie_word_embeddings={raw}"])
  assert c.model.text.tie_word_embeddings is expected


def test_int_into_float_field_and_single_element_tuple():
  c = config_lib.load_config(TINY, ["model.text.rope_theta=3",
                                    "model.vision.fullatt_block_indexes=3"])
  assert c.model.text.rope_theta == 3.0 and isinstance(c.model.text.rope_theta, float)
  assert c.model.vision.fullatt_block_indexes == (3,)


def test_unknown_key_names_the_key_and_the_valid_ones():
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.load_config(TINY, ["--config.model.text.hiden_size=8"])
  msg = str(e.value)
  assert "'model.text.hiden_size'" in msg
  assert "valid keys under model.text" in msg and "hidden_size" in msg and "num_kv_heads" in msg
  assert "did you mean 'model.text.hidden_size'" in msg


def test_unknown_top_level_and_group_keys():
  with pytest.raises(ValueError, match=r"unknown config key 'sed'.*top level.*seed"):
    config_lib.load_config(TINY, ["sed=1"])
  with pytest.raises(ValueError, match=r"unknown config key 'model.txt.hidden_size'.*under model:"):
    config_lib.load_config(TINY, ["model.txt.hidden_size=1"])
  with pytest.raises(ValueError, match=r"'model.dtype.x'.*'model.dtype' is a str"):
    config_lib.load_config(TINY, ["model.dtype.x=1"])
  with pytest.raises(ValueError, match=r"'model.text' is a group of keys"):
    config_lib.load_config(TINY, ["model.text=1"])


@pytest.mark.parametrize("override,expected", [
    ("model.text.hidden_size=abc", "an int"),
    ("model.text.hidden_size=1.5", "an int"),
    ("model.text.rope_theta=fast", "a float"),
    ("model.text.tie_word_embeddings=maybe", "a bool"),
    ("model.vision.fullatt_block_indexes=(1, 2", "a tuple"),
    ("model.vision.fullatt_block_indexes=(1.5, 2)", "int elements"),
])
def test_bad_values_name_the_key(override, expected):
  key = override.split("=")[0]
  with pytest.raises(ValueError, match=expected) as e:
    config_lib.load_config(TINY, [override])
  assert repr(key) in str(e.value)


def test_malformed_overrides():
  for bad in ("model.text.hidden_size", "=3", "--model.seed=1"):
    with pytest.raises(ValueError, match="expected"):
      config_lib.load_config(TINY, [bad])


def test_loaded_config_is_locked():
  c = config_lib.load_config(TINY)
  c.model.text.num_layers = 3  # existing fields stay settable
  with pytest.raises(AttributeError):
    c.model.text.num_layer = 3
  with pytest.raises(AttributeError):
    c.new_top_level_field = 1


def test_tiny_config_fixture(tiny_config):
  assert tiny_config.model.name == "qwen2_5_vl"
  assert tiny_config.is_locked


def test_bad_config_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_lib.load_config(str(tmp_path / "nope.py"))
  empty = tmp_path / "empty.py"
  empty.write_text("X = 1\n")
  with pytest.raises(ValueError, match=r"empty.py.*get_config"):
    config_lib.load_config(str(empty))


def test_config_outside_the_repository_builds_on_the_configs_package(tmp_path):
  (tmp_path / "mine.py").write_text(
      "from configs import tiny\n\n"
      "def get_config():\n  c = tiny.get_config()\n  c.seed = 5\n  return c\n")
  c = config_lib.load_config(str(tmp_path / "mine.py"), ["train.steps=2"])
  assert (c.seed, c.train.steps, c.model.name) == (5, 2, "qwen2_5_vl")


def _flag(argv, default=TINY):
  """A ConfigFlag on its own FlagValues, beside one ordinary launcher flag."""
  values = flags.FlagValues()
  flags.DEFINE_integer("steps", 0, "", flag_values=values)
  return config_lib.ConfigFlag(default, flag_values=values), values


def test_config_flag_parses_launcher_arguments():
  argv = ["prog", f"--config={TINY}", "--config.seed=3", "--steps=5", "--config.model.dtype", "bfloat16",
          "positional"]
  flag, values = _flag(argv)
  assert flag.parse(argv) == ["prog", "positional"]
  assert values.steps == 5
  assert flag.value.seed == 3 and flag.value.model.dtype == "bfloat16" and flag.value.is_locked


def test_config_flag_default_path_and_errors():
  argv = ["prog", "--config.seed=4"]
  flag, _ = _flag(argv)
  flag.parse(argv)
  assert flag.value.seed == 4 and flag.value.model.name == "qwen2_5_vl"
  argv = ["prog", "--config.train.stepz=4"]
  flag, _ = _flag(argv)
  with pytest.raises(config_lib.ConfigError, match="unknown config key 'train.stepz'.*did you mean 'train.steps'"):
    flag.parse(argv)
  argv = ["prog", "--config.seed"]
  flag, _ = _flag(argv)
  with pytest.raises(flags.Error, match="config.seed"):
    flag.parse(argv)
