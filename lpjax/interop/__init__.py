"""Import models published by other frameworks.

* `load_keras_model`: the papers' Keras CIFAR ResNets (`.json` + `.h5`),
  read with h5py only.
"""

from lpjax.interop.keras_h5 import KerasImportError, load_keras_model

__all__ = ['KerasImportError', 'load_keras_model']
