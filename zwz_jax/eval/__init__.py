"""Evaluation: benchmarks, dual-view ZoomBench, the agentic baseline, attention coverage, the LLM judge."""
