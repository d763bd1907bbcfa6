"""Procedural high-resolution scenes with tiny objects and exact metadata.

An offline stand-in for a real image pool: a busy, noisy background with a handful of small,
non-overlapping objects (each well under 10% of the image area) whose every attribute is known
exactly: solid shapes (colour, structure), textured shapes (material), signs (ocr), groups of
identical items (counting) and simple drawn objects (identification). The `scene` teacher
(data_gen/teachers/scene.py) answers from this metadata, so the whole pipeline, and learning, run on
a CPU with no model.

A pool is a folder of `scene_00000.png` images, each with its metadata in `scene_00000.json` beside
it; image readers see an ordinary image folder.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

METADATA_VERSION = 1

# Well separated in RGB so a colour is unambiguous to a model and to a pixel test.
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "yellow": (245, 215, 20),
    "orange": (245, 135, 15),
    "purple": (135, 45, 180),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "pentagon")
MATERIALS = ("striped", "dotted", "checkered", "wooden", "brick")
ICONS = ("key", "cup", "arrow", "flag", "house", "tree")
WORDS = ("EXIT", "STOP", "OPEN", "SALE", "CAFE", "TAXI", "BANK", "PARK", "HOTEL", "GATE", "ZOO", "BUS",
         "SHOP", "INN", "LAB", "FIRE", "WEST", "NORTH", "MILK", "BOOK")
KINDS = ("shape", "texture", "text", "group", "icon")
# Which perception dimensions (zwz_jax.records.DIMENSIONS) each kind of object can be asked about.
KIND_DIMENSIONS = {
    "shape": ("colour", "structure"),
    "texture": ("material", "structure"),
    "text": ("ocr", "colour"),
    "group": ("counting", "colour", "structure"),
    "icon": ("identification", "colour"),
}

_TEXTURE_SHAPES = ("square", "circle", "hexagon", "pentagon")  # big enough areas to show a pattern
_GROUP_SHAPES = ("circle", "square", "triangle", "star", "diamond")
_PLATES = {"white": ("black", "red", "blue", "green", "purple"),  # plate colour -> legible text colours
           "yellow": ("black", "red", "blue", "purple")}
_MAX_OBJECT_FRACTION = 0.06  # of the image area: comfortably inside the 10% micro-region limit


# ----------------------------------------------------------------------------------------------
# Masks and drawings, each on a small local canvas; the tight box is read from the alpha later.
# ----------------------------------------------------------------------------------------------


def _regular(n: int, w: int, h: int, inner: float | None = None) -> list[tuple[float, float]]:
  cx, cy, rx, ry = (w - 1) / 2, (h - 1) / 2, (w - 1) / 2, (h - 1) / 2
  pts, k = [], 2 * n if inner else n
  for i in range(k):
    a = -math.pi / 2 + 2 * math.pi * i / k
    r = inner if inner and i % 2 else 1.0
    pts.append((cx + r * rx * math.cos(a), cy + r * ry * math.sin(a)))
  return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, w: int, h: int, fill) -> None:
  if shape == "circle":
    draw.ellipse([0, 0, w - 1, h - 1], fill=fill)
  elif shape == "square":
    draw.rectangle([0, 0, w - 1, h - 1], fill=fill)
  elif shape == "triangle":
    draw.polygon([((w - 1) / 2, 0), (w - 1, h - 1), (0, h - 1)], fill=fill)
  elif shape == "diamond":
    draw.polygon([((w - 1) / 2, 0), (w - 1, (h - 1) / 2), ((w - 1) / 2, h - 1), (0, (h - 1) / 2)], fill=fill)
  elif shape == "star":
    draw.polygon(_regular(5, w, h, inner=0.45), fill=fill)
  elif shape == "hexagon":
    draw.polygon(_regular(6, w, h), fill=fill)
  elif shape == "pentagon":
    draw.polygon(_regular(5, w, h), fill=fill)
  else:
    raise ValueError(f"unknown shape {shape!r}; shapes are {SHAPES}")


def _shape_mask(shape: str, w: int, h: int) -> Image.Image:
  mask = Image.new("L", (w, h), 0)
  _draw_shape(ImageDraw.Draw(mask), shape, w, h, 255)
  return mask


def _texture(material: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
  """An RGB (h, w, 3) uint8 pattern whose period scales with the object, so it reads at any size."""
  y, x = np.mgrid[0:h, 0:w]
  p = max(4, min(w, h) // 6)
  if material in ("striped", "dotted", "checkered"):
    a, b = rng.choice([c for c in PALETTE if c not in ("white", "black")], size=2, replace=False)
    fg, bg = np.array(PALETTE[a]), np.array(PALETTE["white"] if rng.random() < 0.5 else PALETTE[b])
    if material == "striped":
      t = (x, y, x + y, x - y + h)[int(rng.integers(4))]
      on = (t // max(2, p // 2)) % 2 == 0
    elif material == "dotted":
      on = ((x % p) - p / 2) ** 2 + ((y % p) - p / 2) ** 2 < (0.3 * p) ** 2
    else:
      on = ((x // p) + (y // p)) % 2 == 0
    return np.where(on[..., None], fg, bg).astype(np.uint8)
  if material == "wooden":
    phase, freq = rng.uniform(0, 2 * math.pi), rng.uniform(0.03, 0.08)
    t = y + 0.15 * h * np.sin(x * freq + phase) + 0.05 * h * np.sin(x * 3 * freq)
    grain = 0.5 + 0.5 * np.sin(2 * math.pi * t / max(3, p * 0.7))
    shade = 0.62 + 0.3 * grain ** 3
    base = np.array([165, 105, 50], float)
    return np.clip(base * shade[..., None], 0, 255).astype(np.uint8)
  if material == "brick":
    bh = max(4, min(w, h) // 6)
    bw, mortar = 2 * bh, max(1, bh // 5)
    row = y // bh
    xs = x + (row % 2) * (bw // 2)
    joint = ((y % bh) < mortar) | ((xs % bw) < mortar)
    tone = 0.85 + 0.15 * np.sin(row * 12.9898 + (xs // bw) * 78.233) ** 2  # per-brick variation
    brick = np.array([175, 65, 45], float) * tone[..., None]
    return np.where(joint[..., None], np.array([205, 200, 190], float), brick).astype(np.uint8)
  raise ValueError(f"unknown material {material!r}; materials are {MATERIALS}")


def _draw_icon(name: str, w: int, h: int, fill) -> Image.Image:
  """A simple solid silhouette of an everyday object on a transparent RGBA canvas."""
  im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
  d = ImageDraw.Draw(im)
  clear = (0, 0, 0, 0)
  if name == "key":
    r = 0.22 * w
    d.ellipse([0, h / 2 - r, 2 * r, h / 2 + r], fill=fill)
    d.ellipse([0.35 * r, h / 2 - 0.5 * r, 1.65 * r, h / 2 + 0.5 * r], fill=clear)
    d.rectangle([1.8 * r, 0.42 * h, w - 1, 0.58 * h], fill=fill)
    d.rectangle([0.72 * w, 0.58 * h, 0.8 * w, 0.85 * h], fill=fill)
    d.rectangle([0.88 * w, 0.58 * h, w - 1, 0.78 * h], fill=fill)
  elif name == "cup":
    d.polygon([(0.05 * w, 0.1 * h), (0.72 * w, 0.1 * h), (0.64 * w, h - 1), (0.13 * w, h - 1)], fill=fill)
    d.ellipse([0.55 * w, 0.25 * h, w - 1, 0.75 * h], fill=fill)
    d.ellipse([0.68 * w, 0.37 * h, 0.9 * w, 0.63 * h], fill=clear)
    d.polygon([(0.05 * w, 0.1 * h), (0.72 * w, 0.1 * h), (0.64 * w, h - 1), (0.13 * w, h - 1)], fill=fill)
  elif name == "arrow":
    d.rectangle([0, 0.38 * h, 0.6 * w, 0.62 * h], fill=fill)
    d.polygon([(0.55 * w, 0.08 * h), (w - 1, 0.5 * h), (0.55 * w, 0.92 * h)], fill=fill)
  elif name == "flag":
    d.rectangle([0.05 * w, 0, 0.13 * w, h - 1], fill=fill)
    d.polygon([(0.13 * w, 0.04 * h), (w - 1, 0.04 * h), (0.8 * w, 0.27 * h), (w - 1, 0.5 * h),
               (0.13 * w, 0.5 * h)], fill=fill)
  elif name == "house":
    d.polygon([(0, 0.48 * h), ((w - 1) / 2, 0), (w - 1, 0.48 * h)], fill=fill)
    d.rectangle([0.14 * w, 0.45 * h, 0.86 * w, h - 1], fill=fill)
    d.rectangle([0.42 * w, 0.7 * h, 0.58 * w, h - 1], fill=clear)
  elif name == "tree":
    d.polygon([((w - 1) / 2, 0), (0.85 * w, 0.42 * h), (0.15 * w, 0.42 * h)], fill=fill)
    d.polygon([((w - 1) / 2, 0.18 * h), (w - 1, 0.76 * h), (0, 0.76 * h)], fill=fill)
    d.rectangle([0.42 * w, 0.74 * h, 0.58 * w, h - 1], fill=fill)
  else:
    raise ValueError(f"unknown icon {name!r}; icons are {ICONS}")
  return im


def _tight(im: Image.Image) -> Image.Image:
  box = im.getchannel("A").point(lambda a: 255 if a else 0).getbbox()
  return im.crop(box) if box else im


def _rgba(rgb: np.ndarray, mask: Image.Image) -> Image.Image:
  im = Image.fromarray(rgb, "RGB").convert("RGBA")
  im.putalpha(mask)
  return im


# ----------------------------------------------------------------------------------------------
# Objects: each returns (RGBA sprite cropped to its visible pixels, attributes, group item boxes).
# ----------------------------------------------------------------------------------------------


def _make_shape(rng, s):
  shape, colour = str(rng.choice(SHAPES)), str(rng.choice(list(PALETTE)))
  w = h = s
  im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
  _draw_shape(ImageDraw.Draw(im), shape, w, h, PALETTE[colour] + (255,))
  return _tight(im), {"shape": shape, "colour": colour, "label": f"{colour} {shape}"}, None


def _make_texture(rng, s):
  shape, material = str(rng.choice(_TEXTURE_SHAPES)), str(rng.choice(MATERIALS))
  s = max(s, 28)
  im = _rgba(_texture(material, s, s, rng), _shape_mask(shape, s, s))
  return _tight(im), {"shape": shape, "material": material, "label": f"{material} {shape}"}, None


def _make_text(rng, s, max_area):
  text = str(rng.choice(WORDS)) if rng.random() < 0.6 else str(int(rng.integers(1, 10_000)))
  plate = str(rng.choice(list(_PLATES)))
  colour = str(rng.choice(_PLATES[plate]))
  size = max(14, int(s * 0.45))  # smaller default-font glyphs blur into the plate
  while True:
    font = ImageFont.load_default(size=size)
    l, t, r, b = font.getbbox(text)
    pad = max(3, size // 4)
    w, h = r - l + 2 * pad, b - t + 2 * pad
    if w * h <= max_area or size <= 12:
      break
    size -= 2
  im = Image.new("RGBA", (w, h), PALETTE[plate] + (255,))
  ImageDraw.Draw(im).text((pad - l, pad - t), text, font=font, fill=PALETTE[colour] + (255,))
  attrs = {"text": text, "colour": colour, "plate_colour": plate, "font_size": size, "label": f"{plate} sign"}
  return im, attrs, None


def _make_group(rng, s):
  shape, colour = str(rng.choice(_GROUP_SHAPES)), str(rng.choice(list(PALETTE)))
  count = int(rng.integers(2, 10))
  s = max(40, int(1.3 * s))  # items are a fraction of the group: keep them visible
  cells = 3
  cell = max(10, s // cells)
  d = max(6, int(cell * 0.6))
  item = Image.new("RGBA", (d, d), (0, 0, 0, 0))
  _draw_shape(ImageDraw.Draw(item), shape, d, d, PALETTE[colour] + (255,))
  ix0, iy0, ix1, iy1 = item.getbbox()
  im = Image.new("RGBA", (cell * cells, cell * cells), (0, 0, 0, 0))
  items = []
  for c in sorted(rng.choice(cells * cells, size=count, replace=False).tolist()):
    # Each item inside its own grid cell with >= 2 px to the cell's edges: separately countable.
    x = (c % cells) * cell + int(rng.integers(1, max(2, cell - d)))
    y = (c // cells) * cell + int(rng.integers(1, max(2, cell - d)))
    im.alpha_composite(item, (x, y))
    items.append([x + ix0, y + iy0, x + ix1, y + iy1])
  fx, fy, _, _ = full = im.getbbox()
  items = [[a - fx, b - fy, c - fx, e - fy] for a, b, c, e in items]
  attrs = {"shape": shape, "colour": colour, "count": count, "label": f"group of {colour} {shape}s"}
  return im.crop(full), attrs, items


def _make_icon(rng, s):
  name, colour = str(rng.choice(ICONS)), str(rng.choice(list(PALETTE)))
  aspect = {"key": (1.0, 0.5), "arrow": (1.0, 0.6), "flag": (0.8, 1.0), "cup": (1.0, 0.9)}.get(name, (1.0, 1.0))
  w, h = max(16, int(s * aspect[0])), max(16, int(s * aspect[1]))
  im = _draw_icon(name, w, h, PALETTE[colour] + (255,))
  attrs = {"name": name, "colour": colour, "label": f"{colour} {name}"}
  if name == "arrow":
    turn = int(rng.integers(4))
    im = im.rotate(90 * turn, expand=True) if turn else im
    attrs["direction"] = ("right", "up", "left", "down")[turn]
  return _tight(im), attrs, None


# ----------------------------------------------------------------------------------------------
# Background: low-frequency muted colour field, clutter marks, and pixel noise.
# ----------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
  gh, gw = max(2, h // 40), max(2, w // 40)
  field = rng.uniform(60, 200, size=(gh, gw, 3))
  grey = field.mean(-1, keepdims=True)
  field = grey + 0.35 * (field - grey)  # low saturation, so palette objects are not the only colour
  img = Image.fromarray(field.astype(np.uint8), "RGB").resize((w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(img)
  for _ in range(max(20, w * h // 6000)):
    g = rng.uniform(50, 210)
    col = tuple(int(np.clip(g + t, 0, 255)) for t in rng.uniform(-25, 25, 3))
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
    ext = rng.uniform(0.01, 0.12) * min(w, h)
    x1, y1 = x0 + rng.uniform(-ext, ext), y0 + rng.uniform(-ext, ext)
    box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
    kind, width = int(rng.integers(4)), int(rng.integers(1, 4))
    if kind == 0:
      draw.line([x0, y0, x1, y1], fill=col, width=width)
    elif kind == 1:
      draw.arc(box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)), fill=col, width=width)
    elif kind == 2:
      draw.rectangle(box, outline=col, width=width)
    else:
      draw.ellipse(box, fill=col)
  arr = np.asarray(img, np.int16)
  noise = rng.integers(-14, 15, size=(h, w, 1), dtype=np.int16) + rng.integers(-6, 7, size=(h, w, 3), dtype=np.int16)
  return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------


def _overlaps(box, boxes, gap) -> bool:
  x0, y0, x1, y1 = box
  return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in boxes)


def generate_scene(seed: int, width: int = 1344, height: int = 1008, *, num_objects: tuple[int, int] = (6, 12),
                   size_fraction: tuple[float, float] = (0.001, 0.02), min_side: int = 24,
                   kinds: Sequence[str] = KINDS) -> tuple[Image.Image, dict[str, Any]]:
  """A scene image and its exact metadata; the same arguments always give the same pixels.

  num_objects: (min, max) objects attempted; one that finds no free spot is left out, so a small
    image may hold fewer. The first objects cover every kind in `kinds`.
  size_fraction: (min, max) target area of an object as a fraction of the image, drawn log-uniformly;
    sides are kept >= `min_side` px and every object's box stays under 6% of the image.
  """
  if width < 64 or height < 64:
    raise ValueError(f"scene must be at least 64x64, got {width}x{height}")
  unknown = [k for k in kinds if k not in KINDS]
  if unknown or not kinds:
    raise ValueError(f"kinds {list(kinds)} must be a non-empty subset of {KINDS}")
  rng = np.random.default_rng(seed)
  image = _background(rng, width, height)
  area = width * height
  max_area = _MAX_OBJECT_FRACTION * area
  max_side = int(math.sqrt(max_area))
  # Free space between objects, so a crop around one (grown for context) does not take in another.
  gap = max(8, int(0.04 * min(width, height)))

  n = int(rng.integers(num_objects[0], num_objects[1] + 1))
  order = [str(k) for k in rng.permutation(list(kinds))]
  order += [str(k) for k in rng.choice(list(kinds), size=max(0, n - len(order)))]
  objects, placed = [], []
  for kind in order[:max(n, len(kinds))]:
    frac = math.exp(rng.uniform(math.log(size_fraction[0]), math.log(size_fraction[1])))
    s = int(min(max(math.sqrt(frac * area), min_side), max_side))
    if kind == "shape":
      sprite, attrs, items = _make_shape(rng, s)
    elif kind == "texture":
      sprite, attrs, items = _make_texture(rng, s)
    elif kind == "text":
      sprite, attrs, items = _make_text(rng, s, max_area)
    elif kind == "group":
      sprite, attrs, items = _make_group(rng, s)
    else:
      sprite, attrs, items = _make_icon(rng, s)
    w, h = sprite.size
    if w * h > max_area or w + 2 * gap >= width or h + 2 * gap >= height:
      continue
    for _ in range(200):
      x, y = int(rng.integers(gap, width - w - gap + 1)), int(rng.integers(gap, height - h - gap + 1))
      box = [x, y, x + w, y + h]
      if not _overlaps(box, placed, gap):
        break
    else:
      continue
    placed.append(box)
    image.paste(sprite.convert("RGB"), (x, y), sprite.getchannel("A"))
    obj = {"id": len(objects), "kind": kind, "label": attrs.pop("label"), "bbox": box,
           "shape": None, "colour": None, "material": None, "text": None, "count": None, "name": None,
           "dimensions": list(KIND_DIMENSIONS[kind])}
    obj.update(attrs)
    if items is not None:
      obj["items"] = [[x + a, y + b, x + c, y + d] for a, b, c, d in items]
    objects.append(obj)
  meta = {"version": METADATA_VERSION, "seed": int(seed), "width": width, "height": height, "objects": objects}
  return image, meta


# ----------------------------------------------------------------------------------------------
# Pools on disk
# ----------------------------------------------------------------------------------------------


def scene_seed(seed: int, index: int) -> int:
  """Seed of image `index` of a pool generated with `seed` (pools with different seeds do not share scenes)."""
  return seed * 1_000_003 + index


def metadata_path(image_path: str) -> str:
  return os.path.splitext(image_path)[0] + ".json"


def write_scene_pool(directory: str, num_images: int, seed: int = 0, *, width: int = 1344, height: int = 1008,
                     progress: bool = False, **scene_kwargs) -> list[str]:
  """Writes `scene_{i:05d}.png` and its metadata `scene_{i:05d}.json` for i < num_images; returns the image paths."""
  os.makedirs(directory, exist_ok=True)
  indices = range(num_images)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    indices = tqdm(indices, desc=f"scenes -> {directory}", unit="img")
  paths = []
  for i in indices:
    image, meta = generate_scene(scene_seed(seed, i), width, height, **scene_kwargs)
    path = os.path.join(directory, f"scene_{i:05d}.png")
    image.save(path)
    with open(metadata_path(path), "w") as f:
      json.dump(meta, f)
    paths.append(path)
  return paths


def load_metadata(image_path_or_key: str, root: str | None = None) -> dict[str, Any]:
  """The metadata of a scene, found beside its image.

  Accepts the image path, a path relative to `root`, or a key whose last component is the image
  file name (as pools name images). Raises FileNotFoundError naming the key and the places tried.
  """
  key = str(image_path_or_key)
  candidates = [key]
  if root:
    candidates += [os.path.join(root, key), os.path.join(root, os.path.basename(key)),
                   os.path.join(root, os.path.basename(key).rsplit(":", 1)[-1])]
  tried = []
  for c in candidates:
    path = metadata_path(c)
    if path in tried:
      continue
    tried.append(path)
    if os.path.isfile(path):
      with open(path) as f:
        return json.load(f)
  raise FileNotFoundError(f"no scene metadata for image key {key!r} (tried {tried})")


def ensure_scene_pool(cfg) -> str:
  """Generates the datagen config's procedural scene pool once under `out_dir` (atomically, so
  concurrent workers agree) and returns its path."""
  root = os.path.join(cfg.out_dir, "scene_pool")
  if os.path.isdir(root):
    return root
  os.makedirs(cfg.out_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".scene_pool-", dir=cfg.out_dir)
  s = cfg.scenes
  write_scene_pool(tmp, s.num_images, seed=s.seed, width=s.width, height=s.height, progress=True,
                   kinds=tuple(s.kinds), num_objects=tuple(s.num_objects), size_fraction=tuple(s.size_fraction))
  try:
    os.rename(tmp, root)
  except OSError:  # another worker got there first; its pool is identical
    shutil.rmtree(tmp, ignore_errors=True)
  return root


def resolve_pool(cfg) -> None:
  """An empty `pool.path` means the procedural scenes: generates them and points `pool.path` and every
  scene teacher without a root at them."""
  if not cfg.pool.path:
    if cfg.scenes.num_images <= 0:
      raise ValueError("config pool.path is empty and scenes.num_images is 0: nothing to read")
    cfg.pool.path = ensure_scene_pool(cfg)
  for t in cfg.teachers.values():
    if t.backend == "scene" and not t.root:
      t.root = cfg.pool.path
