"""Image pools: list the source images of one pool, shard them, and load one image safely.

A pool config (ml_collections ConfigDict or plain dict) has `name` and `kind`:
  folder:  `path`, a directory searched recursively for image files (other files are ignored).
  list:    `path`, a text file of image paths, one per line, relative to the list's folder; `#` comments.
  parquet: `path` (a file, a directory of *.parquet, or a glob), `image_column` (bytes, a
           {"bytes", "path"} struct as written by HF datasets, or a path string) and optional
           `key_column` (default: file and row number).
Keys are stable across machines (relative paths, row ids), so the same image gets the same record id.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import io
import os
import re
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps

KINDS = ("folder", "list", "parquet")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
SKIP_REASONS = ("unreadable", "corrupt", "too_small", "too_large")
# PNG files end with the IEND chunk; pixel data can be complete while the file is cut short of it.
_PNG_END = b"IEND\xaeB`\x82"


class ImageSkip(Exception):
  """An image that cannot be used; `reason` is one of SKIP_REASONS, `key` names the image."""

  def __init__(self, reason: str, key: str, detail: str = ""):
    assert reason in SKIP_REASONS, reason
    self.reason, self.key, self.detail = reason, key, detail
    super().__init__(f"{key}: {reason}" + (f" ({detail})" if detail else ""))

  def __reduce__(self):  # crosses process pools intact
    return type(self), (self.reason, self.key, self.detail)


@dataclasses.dataclass(frozen=True)
class ImageItem:
  key: str  # stable and unique within the pool: relative path, or parquet row id
  pool: str
  path: str  # where the bytes live (for messages); use `key` in records, it is machine independent
  load: Callable[[], bytes] = dataclasses.field(compare=False, repr=False)


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  if isinstance(cfg, dict):
    return cfg.get(name, default)
  try:
    value = getattr(cfg, name)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def _read_file(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _is_image(name: str) -> bool:
  # Dot files include macOS "._x.jpg" resource forks, which carry an image extension but no image.
  return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _list_folder(root: str, pool: str) -> list[ImageItem]:
  if not os.path.isdir(root):
    raise FileNotFoundError(f"pool {pool!r}: folder {root!r} (pool path) does not exist")
  items, seen = [], set()
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:  # a symlink loop: walked already
      dirnames[:] = []
      continue
    seen.add(real)
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for name in filenames:
      if _is_image(name):
        path = os.path.join(dirpath, name)
        key = os.path.relpath(path, root).replace(os.sep, "/")
        items.append(ImageItem(key, pool, path, functools.partial(_read_file, path)))
  return items


def _list_file(list_path: str, pool: str) -> list[ImageItem]:
  if not os.path.isfile(list_path):
    raise FileNotFoundError(f"pool {pool!r}: list file {list_path!r} (pool path) does not exist")
  base = os.path.dirname(os.path.abspath(list_path))
  items, seen = [], set()
  with open(list_path, encoding="utf-8") as f:
    for line in f:
      entry = line.strip()  # '#' inside a file name is legal, so only whole-line comments
      if not entry or entry.startswith("#"):
        continue
      key = os.path.normpath(entry).replace(os.sep, "/")
      if key in seen:  # a repeated line would give repeated records
        continue
      seen.add(key)
      path = entry if os.path.isabs(entry) else os.path.join(base, entry)
      items.append(ImageItem(key, pool, path, functools.partial(_read_file, path)))
  return items


def _pyarrow_parquet():
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError("parquet image pools need pyarrow: pip install pyarrow") from None
  return pq


@functools.lru_cache(maxsize=2)
def _row_group(path: str, index: int, column: str):
  # Sharded workers visit a file's rows in order, so one cached row group serves many loads.
  return _pyarrow_parquet().ParquetFile(path).read_row_group(index, columns=[column]).column(0)


def _parquet_load(path: str, group: int, row: int, column: str) -> bytes:
  value = _row_group(path, group, column)[row].as_py()
  if isinstance(value, dict):
    data, ref = value.get("bytes"), value.get("path")
  elif isinstance(value, (bytes, bytearray)):
    data, ref = value, None
  elif isinstance(value, str):
    data, ref = None, value
  else:
    raise OSError(f"column {column!r} holds a {type(value).__name__}, not image bytes")
  if data:
    return bytes(data)
  if ref:
    return _read_file(ref if os.path.isabs(ref) else os.path.join(os.path.dirname(path), ref))
  raise OSError(f"column {column!r} is empty in this row")


def _list_parquet(cfg: Any, pool: str) -> list[ImageItem]:
  pq = _pyarrow_parquet()
  spec = _get(cfg, "path")
  column = _get(cfg, "image_column", "image")
  key_column = _get(cfg, "key_column")
  magic = re.search(r"[*?[]", spec)
  if os.path.isdir(spec):
    files, root = glob.glob(os.path.join(spec, "**", "*.parquet"), recursive=True), spec
  elif magic:  # keys are relative to the folder above the first wildcard
    files, root = glob.glob(spec, recursive=True), os.path.dirname(spec[:magic.start()])
  else:
    files, root = [spec], os.path.dirname(spec)
  files = sorted(files)
  files = [f for f in files if os.path.isfile(f)]
  if not files:
    raise FileNotFoundError(f"pool {pool!r}: no parquet file at {spec!r} (pool path)")
  items, seen = [], {}
  for path in files:
    meta = pq.ParquetFile(path)
    names = meta.schema_arrow.names
    for col, what in ((column, "image_column"), (key_column, "key_column")):
      if col is not None and col not in names:
        raise KeyError(f"pool {pool!r}: {path}: no column {col!r} ({what}); columns are {names}")
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    row = 0
    for g in range(meta.num_row_groups):
      n = meta.metadata.row_group(g).num_rows
      keys = (meta.read_row_group(g, columns=[key_column]).column(0).to_pylist() if key_column
              else [f"{rel}:{row + i}" for i in range(n)])
      for i, key in enumerate(keys):
        key = str(key)
        if key in seen:
          raise ValueError(f"pool {pool!r}: key {key!r} (key_column {key_column!r}) appears twice: "
                           f"{seen[key]} and {path} row {row + i}")
        seen[key] = f"{path} row {row + i}"
        items.append(ImageItem(key, pool, f"{path}#{row + i}", functools.partial(_parquet_load, path, g, i, column)))
      row += n
  return items


def list_pool(cfg: Any) -> list[ImageItem]:
  """Every image of one pool, sorted by key. Lists only: nothing is decoded here."""
  kind = _get(cfg, "kind")
  path = _get(cfg, "path")
  if kind not in KINDS:
    raise ValueError(f"pool kind {kind!r} (pool kind) is not one of {KINDS}")
  if not path:
    raise ValueError(f"pool of kind {kind!r} needs a path (pool path)")
  name = _get(cfg, "name") or os.path.basename(os.path.normpath(path))
  if kind == "folder":
    items = _list_folder(path, name)
  elif kind == "list":
    items = _list_file(path, name)
  else:
    items = _list_parquet(cfg, name)
  return sorted(items, key=lambda it: it.key)


def split_pool(items: Sequence[ImageItem], shard_index: int, num_shards: int) -> list[ImageItem]:
  """This shard's items: every num_shards-th of the key-sorted list, starting at shard_index."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is not in [0, num_shards={num_shards})")
  return sorted(items, key=lambda it: it.key)[shard_index::num_shards]


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _reencode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
  fmt = "jpeg" if fmt == "jpeg" else "png"
  buf = io.BytesIO()
  image.save(buf, format=fmt.upper(), **({"quality": 95} if fmt == "jpeg" else {}))
  return buf.getvalue(), fmt


def _flatten(image: Image.Image) -> Image.Image | None:
  """An 8-bit RGB version when plain convert("RGB") would change what the image looks like."""
  if image.mode.startswith("I") or image.mode == "F":  # 16-bit / float: convert() would clip
    arr = np.asarray(image, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if image.mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535):
      arr = arr / 257.0
    elif lo < 0 or hi > 255:  # unknown range: stretch
      arr = (arr - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
  if "A" in image.getbands() or "transparency" in image.info:  # composite onto white
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")
  return None


def load_image(item: ImageItem, min_side: int = 0, min_pixels: int = 0,
               max_pixels: int | None = None) -> tuple[Image.Image, bytes, str]:
  """(RGB image, encoded bytes, format) of an item, or ImageSkip; never another exception.

  The bytes are what a record stores. They are re-encoded only where a plain decode would differ
  from what the teacher sees (EXIF rotation, transparency, 16-bit), so teacher and student see the
  same pixels. max_pixels: larger images are skipped as too_large (by default only those Pillow
  refuses as decompression bombs).
  Truncation is caught because Pillow's LOAD_TRUNCATED_IMAGES is left False.
  """
  try:
    data = item.load()
  except Exception as e:  # IO of any backend (file, parquet, network FS)
    raise ImageSkip("unreadable", item.key, f"{type(e).__name__}: {e}") from None
  try:
    if not data:
      raise ImageSkip("corrupt", item.key, "empty file")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
      raise ImageSkip("corrupt", item.key, "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncation would go unseen")
    try:
      image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # over twice Image.MAX_IMAGE_PIXELS
      raise ImageSkip("too_large", item.key, str(e)) from None
    w, h = image.size
    if max_pixels is not None and w * h > max_pixels:
      raise ImageSkip("too_large", item.key, f"{w}x{h} > max_pixels={max_pixels}")
    if min(w, h) < min_side or w * h < min_pixels:
      raise ImageSkip("too_small", item.key, f"{w}x{h} (min_side={min_side}, min_pixels={min_pixels})")
    fmt = (image.format or "").lower()
    fmt = "jpeg" if fmt in ("mpo", "jpg") else fmt
    image.verify()  # checks PNG chunk CRCs and structure; the object is unusable afterwards
    if fmt == "png" and data.rfind(_PNG_END) < 0:
      raise ImageSkip("corrupt", item.key, "PNG ends before its IEND chunk")
    image = Image.open(io.BytesIO(data))
    image.load()
    rotated = ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else None
    flat = _flatten(rotated or image)
    if rotated is None and flat is None:
      return image.convert("RGB"), data, fmt
    out = flat or rotated.convert("RGB")
    data, fmt = _reencode(out, fmt)
    return out, data, fmt
  except ImageSkip:
    raise
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
    raise ImageSkip("corrupt", item.key, f"{type(e).__name__}: {e}") from None
