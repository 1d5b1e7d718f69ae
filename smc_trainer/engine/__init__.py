"""The sparse engine: torch only, no Trainer, no transformers import.

Which weights are prunable (`targets`), masks (`masks.MaskSet`), exact selection (`selection`,
`selection_passes`), how a budget is spread (`distributions`), schedules (`schedules`), counter-based
random scores (`random_stream`), module groups (`module_groups`) and the proof that an optimizer keeps
pruned weights at zero (`zero_preserving`). Everything above this layer builds on these pure functions.
"""
