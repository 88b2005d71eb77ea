"""Pretrained ViT, MAE and ResNet weights from local files, split by job:

* :mod:`~abaw_jax.models.weights.files`: ``.safetensors`` / ``.npz`` readers, JSON side files and
  which files a path or ``save_pretrained`` folder stands for; :class:`WeightsError`.
* :mod:`~abaw_jax.models.weights.posemb`: position-embedding resampling with PyTorch's
  interpolation arithmetic.
* :mod:`~abaw_jax.models.weights.convert`: what the readers share (format detection from the
  keys, key -> parameter-tree entries and their checks, default normalisations).
* :mod:`~abaw_jax.models.weights.vit`: timm, Hugging Face ViT / ViTMAE and ``.npz`` ViTs
  (:func:`load_vit`), and whole Hugging Face ``ViTMAEForPreTraining`` models (:func:`load_hf_mae`).
* :mod:`~abaw_jax.models.weights.resnet`: torchvision / timm ResNets (:func:`load_resnet`).

Formats are detected from a file's keys, never from its name alone. Turning a spec into a ready
image encoder (random init, encoder directories, preprocessing) is
:mod:`abaw_jax.models.encoders`' job.
"""

from abaw_jax.models.weights.convert import HALF, IMAGENET_MEAN, IMAGENET_STD, module_config
from abaw_jax.models.weights.files import WeightsError, read_npz, read_safetensors
from abaw_jax.models.weights.posemb import resample_matrix, resample_posemb
from abaw_jax.models.weights.resnet import load_resnet
from abaw_jax.models.weights.vit import load_hf_mae, load_vit

__all__ = [
    "HALF", "IMAGENET_MEAN", "IMAGENET_STD", "WeightsError", "load_hf_mae", "load_resnet",
    "load_vit", "module_config", "read_npz", "read_safetensors", "resample_matrix",
    "resample_posemb",
]
