"""Data: benchmark items (:class:`Example`), the benchmark registry (one module per benchmark),
the paper's contrast corpus and user question files, and derivation questions."""

from lens_steer.data.corpus import corpus_hash, demo_questions_path, load_questions_jsonl, paper_corpus
from lens_steer.data.example import DataFormatError, Example, resolve_data_dir, subsample
from lens_steer.data.questions import Question, as_questions, questions_hash
from lens_steer.data.registry import (
    BENCHMARKS, REGISTRY, BenchmarkSpec, benchmark_key, expand_benchmarks, get_benchmark, load_benchmark, register,
)

__all__ = [
    "BENCHMARKS",
    "REGISTRY",
    "BenchmarkSpec",
    "DataFormatError",
    "Example",
    "Question",
    "as_questions",
    "benchmark_key",
    "corpus_hash",
    "demo_questions_path",
    "expand_benchmarks",
    "get_benchmark",
    "load_benchmark",
    "load_questions_jsonl",
    "paper_corpus",
    "questions_hash",
    "register",
    "resolve_data_dir",
    "subsample",
]
