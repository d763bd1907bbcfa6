"""The paper's evaluation of a Qwen2.5-VL-7B student, with the authors' protocol (ZoomBench:
Qwen2.5-VL-7B 42.5 -> ZwZ-7B 55.6): their system prompt, the benchmark's own query, images up to
16,777,216 pixels, sampling at temperature 0.7 / top_p 0.8 / top_k 20 / presence penalty 1.5 /
seed 42, up to 8,192 new tokens (configs/_eval.py: add_paper_protocol).

  python launch/eval.py --config=configs/eval_paper.py --config.eval.benchmarks=/data/zoombench.parquet,/data/vstar_bench,/data/hr_bench_4k.tsv,/data/hr_bench_8k.tsv \
      --config.processor.tokenizer=/models/Qwen2.5-VL-7B-Instruct \
      --checkpoint=/models/Qwen2.5-VL-7B-Instruct --checkpoint=/runs/zwz-7b --out=out/eval_paper

Slice: v5p:2x2x1 (4 chips, one host) holds the eval program at this resolution (21,632 tokens and
87,808 patches per prompt, 16 prompts, 8,192 new tokens): 34.47 / 95.74 GiB per chip (launch/compile.py
--functions=eval --cost=none, sampling as configured); v5p:2x2x2 17.43, where --multihost splits
each batch 8 + 8 over its two hosts. On v5p:4x4x4 a batch asks 64 prompts, one per chip (6.99 GiB):
eval.batch_size is rounded up to the chips' rows.
"""
from configs import _eval, student_7b


def get_config():
  return _eval.add_paper_protocol(student_7b.get_config(), batch_size=16)
