"""Evaluation: KV-cache sampler, judge, benchmarks, dual-view ZoomBench, attention coverage."""
