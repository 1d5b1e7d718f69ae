"""Releases: the sparse checkpoint format (`hub`: save, push, load), its model card, the optional bitmask
format (`compressed`) and what a run was (`provenance`: run config JSON and the reproducing command).

Sits below training so that `SparseTrainer` can write a release; it takes run configurations as plain
objects (duck-typed) and never imports the training or runs layers.
"""
