"""The HSSCL network: modality-aware stems, a shared small CNN encoder, three L2-normalised descriptor heads.

Modules: :mod:`.stems` (input stems + modality embedding), :mod:`.encoder` (shared encoder, three
levels), :mod:`.heads` (descriptor heads), :mod:`.model` (the network and its config),
:mod:`.registry` (shipped weights: safetensors + registry JSON, sha256-checked, never unpickled).
"""
from .model import HSSCLNet, NetConfig

__all__ = ["HSSCLNet", "NetConfig"]
