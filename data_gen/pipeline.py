"""Region-to-Image Distillation data generation: zoom in with teachers, distill back to the full image.

Per image: propose regions -> keep micro regions -> crop and upscale -> questions on the crop ->
check -> N answers from the teachers -> consensus -> multiple choice -> (difficulty filter on the
boxed full image) -> records of the FULL image. Each stage counts what it keeps and drops (with the
reason) into the manifest; a bad image or an unparsable teacher output is counted and skipped, never
fatal. Work is split over workers by `shard_index/num_shards` and resumes after a kill (writer.py).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import random
from typing import Mapping

import tqdm

from data_gen import boxes as boxes_lib
from data_gen import consensus as consensus_lib
from data_gen import detectors as detectors_lib
from data_gen import grouping
from data_gen import pool as pool_lib
from data_gen import prompts
from data_gen import writer as writer_lib
from data_gen.teachers.base import Request, Teacher, TeacherError
from zwz_jax import answers, records

Counts = collections.Counter


def _teacher_view(image, max_pixels: int, factor: int = 28):
  """The image resized to what a Qwen-VL teacher itself would feed its vision tower.

  Sending exactly that size makes the teacher's own resize an identity, so the absolute pixel
  boxes Qwen2.5-VL answers with are in a coordinate frame we know.
  """
  w, h = image.size
  scale = min(1.0, (max_pixels / (w * h)) ** 0.5)
  tw, th = max(factor, round(w * scale / factor) * factor), max(factor, round(h * scale / factor) * factor)
  while tw * th > max_pixels and max(tw, th) > factor:
    tw, th = (tw - factor, th) if tw >= th else (tw, th - factor)
  return image if (tw, th) == (w, h) else image.resize((tw, th), resample=3)  # BICUBIC


def _rng(seed: int, *parts) -> random.Random:
  digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
  return random.Random(int.from_bytes(digest[:8], "little"))


@dataclasses.dataclass
class Pipeline:
  cfg: object  # the datagen ConfigDict
  teachers: Mapping[str, Teacher]
  # propose.detector's detector; built from the config when not given (None: the teacher's boxes).
  detector: detectors_lib.Detector | None = None

  def __post_init__(self):
    if self.detector is None:
      self.detector = detectors_lib.build(self.cfg)
    if self.cfg.answers.grouper not in grouping.GROUPERS:
      raise ValueError(f"config answers.grouper={self.cfg.answers.grouper!r} is not one of {grouping.GROUPERS}")
    if self.cfg.answers.grouper == "llm":
      self._teacher(self.cfg.answers.grouper_teacher)

  def _teacher(self, name: str) -> Teacher:
    if name not in self.teachers:
      raise KeyError(f"config names teacher {name!r}, but only {sorted(self.teachers)} are configured under teachers")
    return self.teachers[name]

  def process(self, item: pool_lib.ImageItem) -> tuple[list[records.Record], Counts, Counts]:
    """Records for one image, plus stage counts and per-dimension counts."""
    c = self.cfg
    counts, dims = Counts(images=1), Counts()
    try:
      image, data, fmt = pool_lib.load_image(item, min_side=c.pool.min_side, min_pixels=c.pool.min_pixels)
    except pool_lib.ImageSkip as e:
      counts[f"images_skipped/{e.reason}"] += 1
      return [], counts, dims
    source = {"pool": item.pool, "path": item.key}
    try:
      regions = self._propose(item, image, counts)
      out = self._regions(item, image, data, fmt, source, regions, counts, dims)
    except TeacherError as e:  # detectors_lib.DetectorError included, counted apart
      failed = "detector_error" if isinstance(e, detectors_lib.DetectorError) else "teacher_error"
      counts[f"images_failed/{failed}"] += 1
      tqdm.tqdm.write(f"{failed.replace('_', ' ')} on {item.key}: {e}")
      return [], counts, Counts()
    counts["records"] += len(out)
    return out, counts, dims

  def _propose(self, item, image, counts) -> list:
    p = self.cfg.propose
    view = _teacher_view(image, p.max_pixels)
    found = self._teacher_boxes(item, image, view, counts) if self.detector is None else \
        self._detected(item, image, view, counts)
    counts["proposals"] += len(found)
    kept, dropped = boxes_lib.filter_boxes(
        found, image.width, image.height, min_score=p.min_score, max_area_frac=p.max_area_frac,
        min_side=p.min_side)
    for _, reason in dropped:
      counts[f"regions_dropped/{reason}"] += 1
    kept = sorted(kept, key=lambda b: -b.score)[:p.max_regions]
    counts["regions"] += len(kept)
    return kept

  def _teacher_boxes(self, item, image, view, counts) -> list:
    """The teacher's own boxes, in full-image pixels."""
    p = self.cfg.propose
    req = Request(images=(view,), prompt=prompts.propose_prompt(box_format=p.box_format), task="propose",
                  n=1, temperature=0.0, context={"image_key": item.key, "image_size": image.size})
    text = self._teacher(p.teacher).generate([req])[0][0]
    try:
      found = boxes_lib.parse_boxes(text, view.size, p.box_format)
    except boxes_lib.ParseError:
      counts["errors/unparsable_proposals"] += 1
      return []
    sx, sy = image.width / view.width, image.height / view.height
    return [dataclasses.replace(b, x0=b.x0 * sx, y0=b.y0 * sy, x1=b.x1 * sx, y1=b.y1 * sy) for b in found]

  def _detected(self, item, image, view, counts) -> list:
    """The teacher names the objects that appear once; the detector finds each on the full image."""
    p = self.cfg.propose
    context = {"image_key": item.key, "image_size": image.size}
    req = Request(images=(view,), prompt=prompts.objects_prompt(p.max_names), task="objects", n=1,
                  temperature=0.0, context=context)
    try:
      names = prompts.parse_names(self._teacher(p.teacher).generate([req])[0][0], p.max_names)
    except prompts.ParseError:
      counts["errors/unparsable_objects"] += 1
      return []
    counts["object_names"] += len(names)
    found = self.detector.detect(image, names, context)
    counts["object_names_not_found"] += sum(b is None for b in found)
    return [b for b in found if b is not None]

  def _regions(self, item, image, data, fmt, source, regions, counts, dims) -> list[records.Record]:
    c = self.cfg
    boxes = [records.region_box(b.as_list(), image.size) for b in regions]
    crops = [(records.zoom(image, box, c.crop.upscale), box) for box in boxes]
    # Questions on each crop.
    reqs = [Request(images=(crop,), prompt=prompts.questions_prompt(c.questions.per_crop), task="questions",
                    n=1, temperature=c.questions.temperature,
                    context={"image_key": item.key, "crop_box": list(cbox), "label": b.label,
                             "num_questions": c.questions.per_crop})
            for b, (crop, cbox) in zip(regions, crops)]
    candidates = []  # (region index, question, dimension)
    for i, out in enumerate(self._teacher(c.questions.teacher).generate(reqs) if reqs else []):
      try:
        qs = prompts.parse_questions(out[0], c.questions.per_crop)
      except prompts.ParseError:
        counts["errors/unparsable_questions"] += 1
        continue
      candidates += [(i, q, d) for q, d in qs]
    counts["questions"] += len(candidates)
    # Drop ambiguous / unanswerable questions.
    if c.check.enabled and candidates:
      reqs = [Request(images=(crops[i][0],), prompt=prompts.check_prompt(q, d), task="check",
                      context={"image_key": item.key, "crop_box": list(crops[i][1]), "question": q,
                               "dimension": d}) for i, q, d in candidates]
      verdicts = self._teacher(c.check.teacher).generate(reqs)
      kept = []
      for cand, out in zip(candidates, verdicts):
        try:
          ok = prompts.parse_yes_no(out[0])
        except prompts.ParseError:
          counts["errors/unparsable_check"] += 1
          continue
        if ok:
          kept.append(cand)
        else:
          counts["questions_dropped/check"] += 1
      candidates = kept
    # N sampled answers on the crop, split over the answer teachers.
    names = list(c.answers.teachers)
    per = -(-c.answers.samples // len(names))
    answers = [[] for _ in candidates]
    for name in names:
      reqs = [Request(images=(crops[i][0],), prompt=prompts.answer_prompt(q, d), task="answer", n=per,
                      temperature=c.answers.temperature, max_new_tokens=c.answers.max_new_tokens,
                      context={"image_key": item.key, "crop_box": list(crops[i][1]), "question": q,
                               "dimension": d}) for i, q, d in candidates]
      for k, out in enumerate(self._teacher(name).generate(reqs) if reqs else []):
        for text in out:
          try:
            answers[k].append(prompts.parse_answer(text))
          except prompts.ParseError:
            answers[k].append(None)  # still counts in the denominator: 6 of 8, not 6 of 7
            counts["errors/unparsable_answers"] += 1
    answers = [votes[:c.answers.samples] for votes in answers]
    groups = [None] * len(candidates)
    if c.answers.grouper == "llm":
      groups = grouping.llm_groups(
          self._teacher(c.answers.grouper_teacher),
          [(q, {"image_key": item.key, "crop_box": list(crops[i][1]), "dimension": d}) for i, q, d in candidates],
          answers, counts)
    out_records = []
    for (i, q, d), votes, ids in zip(candidates, answers, groups):
      cons = consensus_lib.consensus(votes, c.answers.min_agreement, groups=ids)
      if not cons.keep:
        counts["questions_dropped/no_consensus"] += 1
        continue
      bbox = [round(v, 2) for v in (regions[i].x0, regions[i].y0, regions[i].x1, regions[i].y1)]
      rid = records.make_id(source, bbox, q)
      mc = self._multiple_choice(item, crops[i], q, d, cons, rid, counts)
      if mc is None:
        continue
      options, answer = mc
      rec = records.Record(
          id=rid, image=data, image_format=fmt, width=image.width, height=image.height, bbox=tuple(bbox),
          question=q, options=options, answer=answer, dimension=d, source=source,
          teacher={"names": names, "grouper": c.answers.grouper, "votes": cons.votes, "agreement": cons.agreement,
                   "answer": cons.answer, "region_label": regions[i].label, "region_score": regions[i].score},
          split=c.split)
      try:
        rec.validate()
      except records.RecordError as e:
        counts["errors/invalid_record"] += 1
        tqdm.tqdm.write(str(e))
        continue
      out_records.append(rec)
    if c.difficulty.enabled and out_records:
      out_records = self._difficulty_filter(item, image, out_records, counts)
    for r in out_records:
      dims[r.dimension] += 1
    return out_records

  def _multiple_choice(self, item, crop, q, d, cons, rid, counts):
    """(options, answer letter), or ((), answer text) when mc.num_options is 0 (open answers)."""
    c = self.cfg
    if c.mc.num_options == 0:
      return (), " ".join(str(cons.answer).split())
    distractors = list(cons.minority)
    if len({answers.normalise_answer(x) for x in distractors}) < c.mc.num_options - 1:
      k = c.mc.num_options - 1
      req = Request(images=(crop[0],), prompt=prompts.distractors_prompt(q, cons.answer, k, dimension=d),
                    task="distractors", n=1, temperature=c.mc.temperature,
                    context={"image_key": item.key, "crop_box": list(crop[1]), "question": q, "dimension": d,
                             "answer": cons.answer, "num": k})
      try:
        distractors += prompts.parse_list(self._teacher(c.mc.teacher).generate([req])[0][0])
      except prompts.ParseError:
        counts["errors/unparsable_distractors"] += 1
    try:
      return consensus_lib.make_multiple_choice(cons.answer, distractors, _rng(c.seed, rid), c.mc.num_options)
    except consensus_lib.NotEnoughOptions:
      counts["questions_dropped/too_few_options"] += 1
      return None

  def _difficulty_filter(self, item, image, recs, counts):
    """Drops samples the student already answers from the boxed full image (paper: >= 2 of 4 right)."""
    c = self.cfg.difficulty
    reqs = []
    for r in recs:
      img, text = records.ground(r, "overlay", image=image)
      reqs.append(Request(images=(img,), prompt=text, task="student", n=c.k, temperature=c.temperature,
                          context={"image_key": item.key, "bbox": list(r.bbox), "question": r.question,
                                   "options": list(r.options), "dimension": r.dimension}))
    kept = []
    for r, outs in zip(recs, self._teacher(c.student).generate(reqs)):
      # Judged as evaluation judges the trained student (zwz_jax.answers).
      right = sum(bool(answers.judge(o, r.answer, options=r.options).correct) for o in outs)
      if right >= c.drop_if_correct:
        counts["questions_dropped/too_easy"] += 1
      else:
        kept.append(r)
    return kept


def run_worker(cfg, teachers: Mapping[str, Teacher], *, shard_index: int, num_shards: int,
               detector: detectors_lib.Detector | None = None) -> dict:
  """Processes this worker's part of the pool into `cfg.out_dir`, resuming where a killed run stopped.
  `detector`: propose.detector's, when already built (else built from the config)."""
  items = pool_lib.split_pool(pool_lib.list_pool(cfg.pool), shard_index, num_shards)
  per = cfg.write.images_per_shard
  chunks = [items[i:i + per] for i in range(0, len(items), per)]
  pipeline = Pipeline(cfg, teachers, detector)
  os.makedirs(cfg.out_dir, exist_ok=True)
  totals = Counts()
  bar = tqdm.tqdm(total=len(items), desc=f"worker {shard_index}/{num_shards}", unit="img")
  executor = concurrent.futures.ThreadPoolExecutor(max(1, cfg.write.images_in_flight))
  try:
    _run_chunks(cfg, pipeline, chunks, executor, bar, totals, shard_index)
  finally:
    executor.shutdown(cancel_futures=True)
    bar.close()
  return dict(totals)


def _run_chunks(cfg, pipeline, chunks, executor, bar, totals, shard_index):
  for ci, chunk in enumerate(chunks):
    if writer_lib.chunk_done(cfg.out_dir, shard_index, ci):
      bar.update(len(chunk))
      continue
    cw = writer_lib.ChunkWriter(cfg.out_dir, shard_index, ci, [it.key for it in chunk])
    bar.update(sum(cw.done(it.key) for it in chunk))
    pending = [it for it in chunk if not cw.done(it.key)]
    # Several images in flight keep remote teachers busy; results are logged in pool order.
    for it, (recs, counts, dims) in zip(pending, executor.map(pipeline.process, pending)):
      cw.add(it.key, [records.encode(r) for r in recs], dict(counts), dict(dims))
      totals.update(counts)
      bar.update(1)
      bar.set_postfix(regions=totals["regions"], questions=totals["questions"], records=totals["records"])
    cw.commit()
