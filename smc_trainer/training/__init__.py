"""Training: the argument dataclasses, `SparseTrainer` (a `transformers` Seq2SeqTrainer subclass), the
`SparsityCallback` that drives a method, complete-only checkpoints and the DDP / sharding helpers.

Builds on the engine, the methods and the release format; knows nothing of recipes, sweeps or ledgers.
"""
