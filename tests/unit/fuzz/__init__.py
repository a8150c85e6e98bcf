"""Property-based tests: random and mutated inputs to the file readers and the answer extractors."""
