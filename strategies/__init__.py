"""LoRA-aware aggregation strategies, picked by name from one registry."""
