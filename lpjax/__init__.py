"""lpjax: similarity-guided layer pruning for JAX/Flax.

Submodules are imported on demand so that `import lpjax.cka` needs only JAX.
"""

__version__ = '0.1.0'
