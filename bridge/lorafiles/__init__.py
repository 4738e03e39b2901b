"""LoRA files, torch-free: safe header parsing, inspection and base-model detection,
validation rules, sources and fetching, and the verified content-addressed disk cache.
Used by both the pod's nodes and the bridge."""
