"""Our safetensors reader/writer against the reference `safetensors` package, both ways."""
import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from zwz_jax.models import safetensors_io as st


def _numpy_tensors():
  rng = np.random.default_rng(0)
  return {
      "f64": rng.normal(size=(3, 5)),
      "f32": rng.normal(size=(4, 3, 2)).astype(np.float32),
      "f16": rng.normal(size=(7,)).astype(np.float16),
      "i64": rng.integers(-2**40, 2**40, size=(2, 2)),
      "i32": rng.integers(-100, 100, size=(5,)).astype(np.int32),
      "i16": rng.integers(-100, 100, size=(3,)).astype(np.int16),
      "i8": rng.integers(-100, 100, size=(9,)).astype(np.int8),
      "u8": rng.integers(0, 255, size=(2, 3)).astype(np.uint8),
      "bool": rng.random(5) > 0.5,
      "scalar": np.array(1.5, np.float32),
      "empty": np.zeros((0, 4), np.float32),
      "empty_u8": np.zeros((3, 0), np.uint8),
  }


def _torch_tensors():
  g = torch.Generator().manual_seed(0)
  return {
      "bf16": torch.randn(6, 4, generator=g).to(torch.bfloat16),
      "bf16_odd": torch.randn(3, generator=g).to(torch.bfloat16),
      "f8_e4m3": torch.randn(5, generator=g).to(torch.float8_e4m3fn),
      "f8_e5m2": torch.randn(5, generator=g).to(torch.float8_e5m2),
      "f32": torch.randn(2, 3, generator=g),
      "empty_bf16": torch.zeros(0, 2, dtype=torch.bfloat16),
  }


def _bits(x):
  """Raw bytes of a tensor or array, to compare bf16/f8 without float conversions."""
  if isinstance(x, torch.Tensor):
    x = x.contiguous().view(torch.uint8).numpy() if x.numel() else np.zeros(0, np.uint8)
  return np.ascontiguousarray(x).reshape(-1).view(np.uint8).tobytes()


def _shuffled(d):
  return [(k, d[k]) for k in sorted(d, key=lambda k: hash(k) % 7919)]


def test_numpy_round_trip_is_byte_identical_to_reference(tmp_path):
  tensors = _numpy_tensors()
  (path,) = st.write_safetensors(tmp_path / "ours", _shuffled(tensors))
  assert os.path.basename(path) == "model.safetensors"
  safetensors.numpy.save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
  with open(path, "rb") as a, open(tmp_path / "ref.safetensors", "rb") as b:
    assert a.read() == b.read()
  loaded = safetensors.numpy.load_file(path)
  assert set(loaded) == set(tensors)
  for k, v in tensors.items():
    assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
    np.testing.assert_array_equal(loaded[k], v)


def test_read_reference_numpy_file(tmp_path):
  tensors = _numpy_tensors()
  safetensors.numpy.save_file(tensors, str(tmp_path / "model.safetensors"))
  with st.SafetensorsCheckpoint(tmp_path) as ckpt:
    assert sorted(ckpt.keys()) == sorted(tensors) and len(ckpt) == len(tensors)
    for k, v in tensors.items():
      assert k in ckpt
      assert ckpt.shape(k) == v.shape and ckpt.dtype(k) == v.dtype
      got = ckpt.get(k)
      assert got.dtype == v.dtype and got.shape == v.shape
      np.testing.assert_array_equal(got, v)
      assert not got.flags.writeable
    assert "missing" not in ckpt
    with pytest.raises(KeyError, match="missing"):
      ckpt.get("missing")
  assert ckpt.metadata() == {}


def test_get_is_a_zero_copy_view_of_the_mapped_file(tmp_path):
  x = np.arange(1 << 16, dtype=np.float32)
  (path,) = st.write_safetensors(tmp_path, [("x", x)])
  ckpt = st.SafetensorsCheckpoint(path)
  a, b = ckpt.get("x"), ckpt.get("x")
  assert np.shares_memory(a, b)  # both views of one mapping, no per-call copy
  base = a
  while base.base is not None and not isinstance(base, np.memmap):
    base = base.base
  assert isinstance(base, np.memmap)
  ckpt.close()
  np.testing.assert_array_equal(a, x)  # arrays handed out outlive close()


def test_bf16_and_f8_written_by_us_read_by_torch(tmp_path):
  ref = _torch_tensors()
  ours = {}
  for k, v in ref.items():
    dtype = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
             torch.float8_e5m2: ml_dtypes.float8_e5m2, torch.float32: np.float32}[v.dtype]
    ours[k] = np.frombuffer(_bits(v), dtype).reshape(tuple(v.shape))
  (path,) = st.write_safetensors(tmp_path, _shuffled(ours))
  loaded = safetensors.torch.load_file(path)
  for k, v in ref.items():
    assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
    assert _bits(loaded[k]) == _bits(v)
  safetensors.torch.save_file(ref, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
  with open(path, "rb") as a, open(tmp_path / "ref.safetensors", "rb") as b:
    assert a.read() == b.read()


def test_bf16_and_f8_written_by_torch_read_by_us(tmp_path):
  ref = _torch_tensors()
  safetensors.torch.save_file(ref, str(tmp_path / "t.safetensors"), metadata={"format": "pt"})
  with st.SafetensorsCheckpoint(tmp_path / "t.safetensors") as ckpt:
    assert ckpt.metadata() == {"format": "pt"}
    assert ckpt.dtype("bf16") == np.dtype(ml_dtypes.bfloat16)
    assert ckpt.dtype("f8_e4m3") == np.dtype(ml_dtypes.float8_e4m3fn)
    assert ckpt.dtype("f8_e5m2") == np.dtype(ml_dtypes.float8_e5m2)
    for k, v in ref.items():
      got = ckpt.get(k)
      assert got.shape == tuple(v.shape)
      assert _bits(got) == _bits(v)
    np.testing.assert_array_equal(ckpt.get("bf16").astype(np.float32),
                                  ref["bf16"].float().numpy())


def test_sharded_write_matches_transformers_layout(tmp_path):
  tensors = {f"layer.{i}.w": np.full((10, 10), i, np.float32) for i in range(5)}  # 400 B each
  tensors["big"] = np.ones((30, 10), np.float32)  # 1200 B: over the limit, gets its own shard
  order = ["layer.0.w", "layer.1.w", "big", "layer.2.w", "layer.3.w", "layer.4.w"]
  paths = st.write_safetensors(tmp_path, ((k, tensors[k]) for k in order), max_shard_bytes=1000)
  names = [os.path.basename(p) for p in paths]
  assert names == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
  assert sorted(os.listdir(tmp_path)) == sorted(names + ["model.safetensors.index.json"])
  with open(tmp_path / "model.safetensors.index.json") as f:
    index = json.load(f)
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())
  assert index["weight_map"] == {
      "layer.0.w": names[0], "layer.1.w": names[0], "big": names[1],
      "layer.2.w": names[2], "layer.3.w": names[2], "layer.4.w": names[3]}
  for name in names:  # every shard is a valid file on its own
    for k, v in safetensors.numpy.load_file(str(tmp_path / name)).items():
      np.testing.assert_array_equal(v, tensors[k])
  for where in (tmp_path, tmp_path / "model.safetensors.index.json"):
    with st.SafetensorsCheckpoint(where) as ckpt:
      assert sorted(ckpt.keys()) == sorted(tensors)
      assert ckpt.metadata() == {"format": "pt"}
      for k, v in tensors.items():
        assert ckpt.shape(k) == v.shape
        np.testing.assert_array_equal(ckpt.get(k), v)


def test_read_sharded_checkpoint_written_by_transformers_style_index(tmp_path):
  a = {"a": np.arange(4, dtype=np.float32)}
  b = {"b": np.arange(3, dtype=np.int64)}
  safetensors.numpy.save_file(a, str(tmp_path / "part-a.safetensors"))
  safetensors.numpy.save_file(b, str(tmp_path / "part-b.safetensors"))
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {"total_size": 40}, "weight_map": {"a": "part-a.safetensors",
                                                      "b": "part-b.safetensors"}}))
  with st.SafetensorsCheckpoint(tmp_path) as ckpt:
    np.testing.assert_array_equal(ckpt.get("a"), a["a"])
    np.testing.assert_array_equal(ckpt.get("b"), b["b"])


def test_rewrite_removes_stale_checkpoint_files(tmp_path):
  x = np.zeros((100,), np.float32)
  st.write_safetensors(tmp_path, [("a", x), ("b", x)], max_shard_bytes=400)
  assert "model.safetensors.index.json" in os.listdir(tmp_path)
  (tmp_path / "config.json").write_text("{}")  # not ours: must survive
  st.write_safetensors(tmp_path, [("a", x)])
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_strided_big_endian_and_non_numpy_inputs(tmp_path):
  x = np.arange(24, dtype=np.float32).reshape(4, 6)
  tensors = [("t", x.T), ("be", x.astype(">f4")), ("slice", x[:, ::2]), ("list", [[1, 2], [3, 4]])]
  (path,) = st.write_safetensors(tmp_path, tensors, metadata=None)
  loaded = safetensors.numpy.load_file(path)
  np.testing.assert_array_equal(loaded["t"], x.T)
  np.testing.assert_array_equal(loaded["be"], x)
  assert loaded["be"].dtype == np.float32
  np.testing.assert_array_equal(loaded["slice"], x[:, ::2])
  np.testing.assert_array_equal(loaded["list"], [[1, 2], [3, 4]])
  assert st.SafetensorsCheckpoint(path).metadata() == {}


def test_strided_input_streams_in_row_chunks(tmp_path, monkeypatch):
  monkeypatch.setattr(st, "_COPY_CHUNK", 64)  # a few rows per chunk
  x = np.arange(50 * 7, dtype=np.float64).reshape(50, 7)
  (path,) = st.write_safetensors(tmp_path, [("t", x.T), ("c", x)])
  with st.SafetensorsCheckpoint(path) as ckpt:
    np.testing.assert_array_equal(ckpt.get("t"), x.T)
    np.testing.assert_array_equal(ckpt.get("c"), x)


def test_copy_fallback_without_copy_file_range(tmp_path, monkeypatch):
  monkeypatch.delattr(os, "copy_file_range", raising=False)
  tensors = _numpy_tensors()
  (path,) = st.write_safetensors(tmp_path, tensors.items())
  for k, v in safetensors.numpy.load_file(path).items():
    np.testing.assert_array_equal(v, tensors[k])


def test_empty_checkpoint(tmp_path):
  (path,) = st.write_safetensors(tmp_path, [])
  assert safetensors.numpy.load_file(path) == {}
  assert st.SafetensorsCheckpoint(path).keys() == []


def test_writer_rejects_bad_input_and_leaves_no_temporaries(tmp_path):
  with pytest.raises(ValueError, match="'a' given twice"):
    st.write_safetensors(tmp_path, [("a", np.zeros(2)), ("a", np.zeros(2))])
  with pytest.raises(ValueError, match="'c'.*complex128"):
    st.write_safetensors(tmp_path, [("ok", np.zeros(2)), ("c", np.zeros(2, np.complex128))])
  with pytest.raises(ValueError, match="metadata"):
    st.write_safetensors(tmp_path, [("a", np.zeros(2))], metadata={"n": 1})

  def failing():
    yield "a", np.zeros(2)
    raise RuntimeError("producer failed")

  with pytest.raises(RuntimeError, match="producer failed"):
    st.write_safetensors(tmp_path, failing(), max_shard_bytes=1)
  assert os.listdir(tmp_path) == []


def test_truncated_file_names_file_and_tensor(tmp_path):
  tensors = {"first": np.zeros((4,), np.float32), "second": np.ones((256,), np.float32)}
  (path,) = st.write_safetensors(tmp_path, tensors.items())
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:-10])
  with pytest.raises(st.SafetensorsError, match=r"model\.safetensors.*'second'.*truncated"):
    st.SafetensorsCheckpoint(path).get("first")
  with open(path, "wb") as f:
    f.write(data[:100])  # cut inside the header
  with pytest.raises(st.SafetensorsError, match=r"model\.safetensors.*header length"):
    st.SafetensorsCheckpoint(path).keys()
  with open(path, "wb") as f:
    f.write(data[:5])
  with pytest.raises(st.SafetensorsError, match=r"model\.safetensors.*too short"):
    st.SafetensorsCheckpoint(path).shape("first")


def test_bad_headers(tmp_path):
  def write(header_bytes, data=b""):
    path = tmp_path / "x.safetensors"
    path.write_bytes(len(header_bytes).to_bytes(8, "little") + header_bytes + data)
    return path

  with pytest.raises(st.SafetensorsError, match="not valid JSON"):
    st.SafetensorsCheckpoint(write(b"{not json")).keys()
  bad_dtype = json.dumps({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode()
  with pytest.raises(st.SafetensorsError, match=r"tensor 'w'.*unsupported dtype 'F4'"):
    st.SafetensorsCheckpoint(write(bad_dtype, b"\0")).keys()
  bad_size = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
  with pytest.raises(st.SafetensorsError, match=r"tensor 'w'.*do not match F32\[2\]"):
    st.SafetensorsCheckpoint(write(bad_size, b"\0" * 8)).keys()


def test_missing_shard_and_missing_checkpoint(tmp_path):
  (tmp_path / "model.safetensors.index.json").write_text(
      json.dumps({"weight_map": {"a": "gone.safetensors"}}))
  with pytest.raises(st.SafetensorsError, match="gone.safetensors"):
    st.SafetensorsCheckpoint(tmp_path)
  with pytest.raises(FileNotFoundError):
    st.SafetensorsCheckpoint(tmp_path / "empty_dir_does_not_exist")


def test_module_does_not_import_torch():
  code = ("import sys; import zwz_jax.models.safetensors_io; "
          "assert 'torch' not in sys.modules, 'torch imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
