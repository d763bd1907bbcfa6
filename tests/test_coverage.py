"""Attention coverage: token -> pixel geometry, coverage arithmetic, span slicing, heatmaps."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw
import pytest

from zwz_jax.data import processor as proc
from zwz_jax.eval import coverage as cov

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATCH, MERGE = 14, 2
FACTOR = PATCH * MERGE


def grid_for(width, height, min_pixels=FACTOR * FACTOR * 4, max_pixels=FACTOR * FACTOR * 256):
  h, w = proc.smart_resize(height, width, FACTOR, min_pixels, max_pixels)
  return np.array([1, h // PATCH, w // PATCH]), (w, h)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


# Sizes that resize up, down, stay put, or are far from multiples of 28, and extreme aspects.
@pytest.mark.parametrize("size", [(640, 480), (333, 517), (1001, 57), (50, 50), (3000, 2000),
                                  (280, 168), (29, 900)])
def test_token_boxes_tile_the_image_row_major(size):
  width, height = size
  grid, (rw, rh) = grid_for(width, height)
  boxes = cov.token_boxes(grid, size, patch_size=PATCH, merge_size=MERGE)
  rows, cols = rh // FACTOR, rw // FACTOR
  assert boxes.shape == (rows * cols, 4) == (proc.num_image_tokens(grid, MERGE), 4)

  # Scaled back to the resized image, token k is cell (k // cols, k % cols) of 28 px.
  r, c = np.divmod(np.arange(rows * cols), cols)
  want_resized = np.stack([c, r, c + 1, r + 1], axis=-1) * FACTOR
  scale = np.array([rw / width, rh / height] * 2)
  np.testing.assert_allclose(boxes * scale, want_resized, rtol=0, atol=1e-9)

  # Exact tiling: the outer edges are the image's, neighbours share edges bit for bit, and the
  # areas add up to the image's.
  assert boxes[:, :2].min() == 0 and boxes[:, 2].max() == width and boxes[:, 3].max() == height
  grid_boxes = boxes.reshape(rows, cols, 4)
  np.testing.assert_array_equal(grid_boxes[:, 1:, 0], grid_boxes[:, :-1, 2])
  np.testing.assert_array_equal(grid_boxes[1:, :, 1], grid_boxes[:-1, :, 3])
  np.testing.assert_array_equal(grid_boxes[:, :, 1], grid_boxes[:, :1, 1].repeat(cols, 1))
  np.testing.assert_array_equal(grid_boxes[:, :, 0], grid_boxes[:1, :, 0].repeat(rows, 0))
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  assert areas.min() > 0
  assert np.isclose(areas.sum(), width * height, rtol=1e-12)
  # The whole image as the box: every token fully inside.
  np.testing.assert_allclose(cov.box_fraction(boxes, [0, 0, width, height]), 1.0)


def test_token_order_matches_the_processor_patches():
  # A white rectangle on black: tokens whose boxes lie inside it see white patches, tokens outside
  # see black, through the real resize + patchify (the merged token k is patch rows 4k..4k+3).
  width, height = 300, 170
  rect = (84, 40, 230, 120)
  image = Image.new("RGB", (width, height))
  ImageDraw.Draw(image).rectangle([rect[0], rect[1], rect[2] - 1, rect[3] - 1], fill=(255,) * 3)
  patches, grid = proc.preprocess_image(
      image, patch_size=PATCH, temporal_patch_size=2, merge_size=MERGE, min_pixels=FACTOR**2,
      max_pixels=FACTOR**2 * 100, image_mean=(0, 0, 0), image_std=(1, 1, 1))
  tokens = patches.reshape(-1, MERGE**2 * patches.shape[1]).mean(axis=1)
  frac = cov.box_fraction(cov.token_boxes(grid, image.size), rect)
  assert len(tokens) == len(frac)
  assert (frac == 1).any() and (frac == 0).any()
  assert tokens[frac == 1].min() > 0.9
  assert tokens[frac == 0].max() < 0.1
  # Partly covered tokens track their area share (bicubic only blurs a couple of pixels).
  np.testing.assert_allclose(tokens, frac, atol=0.08)


def test_box_fraction_is_exact():
  # 4x4 tokens of 28x28 px on a 112x112 image (no resize).
  boxes = cov.token_boxes([1, 8, 8], (112, 112))
  frac = cov.box_fraction(boxes, [14, 0, 56, 7]).reshape(4, 4)
  want = np.zeros((4, 4))
  want[0, 0] = 14 * 7 / 28**2
  want[0, 1] = 28 * 7 / 28**2
  np.testing.assert_allclose(frac, want)
  # A box outside the image and an empty box cover nothing.
  np.testing.assert_array_equal(cov.box_fraction(boxes, [200, 200, 300, 300]), 0)
  np.testing.assert_array_equal(cov.box_fraction(boxes, [30, 30, 30, 60]), 0)
  with pytest.raises(ValueError, match="bbox"):
    cov.box_fraction(boxes, [50, 0, 10, 10])


def test_token_boxes_rejects_bad_grids():
  with pytest.raises(ValueError, match="merge_size"):
    cov.token_boxes([1, 7, 8], (100, 100))
  with pytest.raises(ValueError, match="still images"):
    cov.token_boxes([2, 8, 8], (100, 100))
  with pytest.raises(ValueError, match="one image"):
    cov.token_boxes([[1, 8, 8], [1, 8, 8]], (100, 100))


# ----------------------------------------------------------------------------------------------
# Coverage
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def setup():
  # 6 x 4 tokens over a 600 x 400 image: each token is 100 x 100 px of the original.
  grid = np.array([1, 8, 12])
  return grid, cov.token_boxes(grid, (600, 400))


def one_hot(n, idx, weights=None):
  a = np.zeros(n)
  a[list(idx)] = 1 if weights is None else weights
  return a


def test_coverage_all_inside_half_and_straddling(setup):
  _, boxes = setup
  n = len(boxes)
  bbox = [100, 100, 300, 250]  # tokens (1,1),(1,2) fully inside; (2,1),(2,2) half inside
  inside = [1 * 6 + 1, 1 * 6 + 2]
  straddle = [2 * 6 + 1, 2 * 6 + 2]
  outside = [0, 23]
  for mode in cov.MODES[:2]:
    assert cov.coverage(one_hot(n, inside), boxes, bbox, mode=mode) == 1.0
    assert cov.coverage(one_hot(n, outside), boxes, bbox, mode=mode) == 0.0
    assert cov.coverage(one_hot(n, [inside[0], outside[0]]), boxes, bbox, mode=mode) == 0.5
  # Unnormalised attention is renormalised over the image tokens.
  assert cov.coverage(3e-3 * one_hot(n, [inside[0], outside[1]]), boxes, bbox) == 0.5
  # A straddling token counts by its exact area share; "center" rounds it by its centre (y=250).
  assert cov.coverage(one_hot(n, straddle[:1]), boxes, bbox) == pytest.approx(0.5)
  assert cov.coverage(one_hot(n, straddle[:1]), boxes, [100, 100, 300, 230]) == pytest.approx(0.3)
  assert cov.coverage(one_hot(n, straddle[:1]), boxes, [100, 100, 300, 230], mode="center") == 0
  assert cov.coverage(one_hot(n, straddle[:1]), boxes, [100, 100, 300, 251], mode="center") == 1
  # Weighted mix: 0.2 on an inside token, 0.6 on a 30% token, 0.2 outside -> 0.2 + 0.18.
  a = one_hot(n, [inside[0], straddle[0], outside[0]], [0.2, 0.6, 0.2])
  assert cov.coverage(a, boxes, [100, 100, 300, 230]) == pytest.approx(0.38)


def test_coverage_averages_heads_first(setup):
  _, boxes = setup
  n = len(boxes)
  bbox = [0, 0, 100, 100]  # token 0
  heads = np.stack([one_hot(n, [0]), one_hot(n, [5]), one_hot(n, [0, 5], [0.5, 0.5]),
                    one_hot(n, [0])])
  assert cov.coverage(heads, boxes, bbox) == pytest.approx((1 + 0 + 0.5 + 1) / 4)
  assert cov.coverage(heads, boxes, bbox) == cov.coverage(heads.mean(0), boxes, bbox)
  # Uniform attention covers the box's share of the image.
  uniform = np.full((3, n), 1 / n)
  assert cov.coverage(uniform, boxes, [0, 0, 300, 200]) == pytest.approx(0.25)


def test_reference_mode_follows_the_authors_rounding(setup):
  _, boxes = setup
  n = len(boxes)
  uniform = np.full(n, 1 / n)
  # Box exactly on token (1,1): truncation then the inclusive end cell and the one-cell widening
  # take a 2x2 block; the exact share is one token.
  assert cov.coverage(uniform, boxes, [100, 100, 200, 200]) == pytest.approx(1 / 24)
  assert cov.coverage(uniform, boxes, [100, 100, 200, 200], mode="reference") == pytest.approx(4 / 24)
  # A box inside one cell is widened to two cells per axis; at the last column the slice is cut.
  assert cov.coverage(uniform, boxes, [510, 10, 590, 90], mode="reference") == pytest.approx(2 / 24)
  # Box ending mid-cell: cells 1..2 by 1..2 (end cell included).
  assert cov.coverage(uniform, boxes, [150, 150, 250, 250], mode="reference") == pytest.approx(4 / 24)


def test_coverage_errors(setup):
  _, boxes = setup
  with pytest.raises(ValueError, match="24 token boxes"):
    cov.coverage(np.ones(10), boxes, [0, 0, 1, 1])
  with pytest.raises(ValueError, match="mode"):
    cov.coverage(np.ones(24), boxes, [0, 0, 1, 1], mode="area")
  with pytest.raises(ValueError, match="sums to"):
    cov.coverage(np.zeros(24), boxes, [0, 0, 1, 1])


def test_summarize():
  assert cov.summarize([0.1, 0.5, 0.3, float("nan")]) == {"mean": pytest.approx(0.3),
                                                           "median": 0.3, "n": 3}
  empty = cov.summarize([])
  assert empty["n"] == 0 and np.isnan(empty["mean"])


# ----------------------------------------------------------------------------------------------
# Image tokens in a sequence
# ----------------------------------------------------------------------------------------------

IMG, VS, VE = 99, 97, 98


def test_image_token_spans_and_slicing():
  # text, image A (2x3 tokens), text, image B (2x2 tokens), text
  grids = np.array([[1, 4, 6], [1, 4, 4]])
  ids = np.array([1, 2, VS] + [IMG] * 6 + [VE, 5, VS] + [IMG] * 4 + [VE, 7, 8])
  spans = cov.image_token_spans(ids, IMG)
  assert spans == [(3, 9), (12, 16)]
  assert cov.image_token_spans(ids, IMG, grids) == spans

  heads, length = 3, len(ids) + 4  # a decode cache may hold more keys than the prompt
  row = np.arange(heads * length, dtype=np.float64).reshape(heads, length)
  a = cov.answer_attention_to_images(row, ids, IMG, image_index=1)
  np.testing.assert_array_equal(a, row[:, 12:16])
  b = cov.answer_attention_to_images(row[0], ids, IMG)
  np.testing.assert_array_equal(b, row[:1, 3:9])
  # The slice feeds coverage and attention_map directly.
  assert cov.attention_map(a, grids[1]).shape == (2, 2)
  assert 0 <= cov.coverage(a, cov.token_boxes(grids[1], (56, 56)), [0, 0, 28, 28]) <= 1
  with pytest.raises(ValueError, match="out of range"):
    cov.answer_attention_to_images(row, ids, IMG, image_index=2)
  with pytest.raises(ValueError, match="keys"):
    cov.answer_attention_to_images(row[:, :10], ids, IMG, image_index=1)


def test_image_token_spans_splits_back_to_back_images():
  grids = np.array([[1, 2, 4], [1, 2, 2]])  # 2 tokens then 1 token, one run of 3
  ids = np.array([0, IMG, IMG, IMG, 0])
  assert cov.image_token_spans(ids, IMG) == [(1, 4)]
  assert cov.image_token_spans(ids, IMG, grids) == [(1, 3), (3, 4)]
  with pytest.raises(ValueError, match="token counts"):
    cov.image_token_spans(ids, IMG, np.array([[1, 4, 4]]))
  with pytest.raises(ValueError, match="cover only"):
    cov.image_token_spans(ids, IMG, np.array([[1, 2, 6], [1, 2, 2]]))


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------


def test_attention_map_is_row_major():
  m = cov.attention_map(np.arange(12.0), [1, 6, 8])
  np.testing.assert_array_equal(m, np.arange(12.0).reshape(3, 4))
  with pytest.raises(ValueError, match="3x4"):
    cov.attention_map(np.arange(10.0), [1, 6, 8])


def test_colormap_ends_and_shape():
  c = cov.colormap(np.array([[0.0, 1.0], [0.5, 2.0]]))
  assert c.shape == (2, 2, 3) and c.dtype == np.uint8
  np.testing.assert_array_equal(c[0, 0], (68, 1, 84))
  np.testing.assert_array_equal(c[0, 1], (253, 231, 37))
  np.testing.assert_array_equal(c[1, 1], c[0, 1])  # clipped


@pytest.mark.parametrize("resample", ["nearest", "bilinear"])
def test_heatmap_png(tmp_path, resample):
  width, height = 333, 217
  grid, _ = grid_for(width, height)
  n = proc.num_image_tokens(grid, MERGE)
  image = Image.new("RGB", (width, height), (128, 128, 128))
  attn = np.random.default_rng(0).random((2, n))
  bbox = [40, 30, 200, 150]
  path = tmp_path / "heat.png"
  out = cov.heatmap_png(image, attn, grid, bbox=bbox, path=str(path), resample=resample)
  assert out.size == (width, height) and out.mode == "RGB"
  saved = Image.open(path)
  assert saved.size == (width, height) and saved.format == "PNG"
  px = np.asarray(saved)
  green = np.all(px == (0, 255, 0), axis=-1)
  # The outline runs along the box edges and nowhere else.
  assert green[30, 40:201].all() and green[150, 40:201].all()
  assert green[30:151, 40].all() and green[30:151, 200].all()
  assert not green[:25].any() and not green[:, 205:].any() and not green[40:140, 50:190].any()
  # Outside the box the picture is the blend of grey and the colour map (not grey, not green).
  assert not np.all(px[200, 300] == 128)
  no_box = cov.heatmap_png(image, attn, grid)
  assert not np.all(np.asarray(no_box) == (0, 255, 0), axis=-1).any()


def test_coverage_module_does_not_import_jax():
  code = ("import sys; import zwz_jax.eval.coverage; "
          "bad = [m for m in ('jax', 'flax', 'torch') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
