"""Training LoRAs on the pods: datasets (``dataset.py``), presets (``presets.py``) and the training
graph (``graph.py``). Pure Python (no torch, no ComfyUI): the service and the pod routes share it."""
