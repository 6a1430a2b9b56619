"""Hugging Face interchange: import Llama/Mistral/Qwen2 checkpoints into hetron, export hetron's.

hf_config (config.json <-> model fields) and tensor_map (names and fused layouts) are pure;
weight_files, load, importer and exporter are the IO shells around them.
"""
