"""The paper's evaluation of a Qwen3-VL-8B student, with the authors' protocol (ZoomBench:
Qwen3-VL-8B 37.9 -> ZwZ-8B 58.1): as configs/eval_paper.py (configs/_eval.py: add_paper_protocol).

  python launch/eval.py --config=configs/eval_paper_qwen3.py --config.eval.benchmarks=/data/zoombench.parquet,/data/vstar_bench,/data/hr_bench_4k.tsv \
      --config.processor.tokenizer=/models/Qwen3-VL-8B-Instruct \
      --checkpoint=/models/Qwen3-VL-8B-Instruct --checkpoint=/runs/zwz-8b --out=out/eval_paper_qwen3

Slice: v5p:2x2x1 (4 chips, one host) holds the eval program at this resolution (16,640 tokens and
65,536 patches per prompt, 16 prompts, 8,192 new tokens): 44.02 / 95.74 GiB per chip (launch/compile.py
--functions=eval --cost=none); v5p:2x2x2 22.31.
"""
from configs import _eval, student_qwen3_8b


def get_config():
  return _eval.add_paper_protocol(student_qwen3_8b.get_config(), batch_size=16)
