"""ViT feature extraction, abaw_jax against timm: the two sides of benchmark.py's "extract" rows.

The abaw_jax side is the function `abaw_jax.extract` runs (`make_extract_fn`: uint8 images in,
normalisation, the ViT, mean pooling), compiled once, with the batch already on the device; the
timm side is `vit_base_patch16_224` (with the same dims when a smaller ViT is benchmarked) under
`torch.inference_mode()` on normalised float images, eager or after torch.compile. Both use
random weights. `python scripts/benchmark.py --systems extract`
prints these rows alone (`--small` on a CPU, `--peak-tflops 989` on a GPU).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any, Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.common import xla_flops  # noqa: E402

TIMM_MODEL = "vit_base_patch16_224"


def make_jax(spec: str, image_size: int, batch: int, dtype: Any,
             attention_impl: str = "default") -> tuple[Callable[[], None], float, int, Any]:
    """``(step, flops, params, module)`` of abaw_jax's extraction of one batch of random images.

    ``step`` runs one blocking batch; ``flops`` is XLA's count for it; ``module`` is the ViT, whose
    dims the timm twin copies. ``spec`` is an `encoders.load_encoder` random-init spec
    ("vit:B/16", "vit:Ti/16,depth=2"); ``attention_impl`` picks the attention kernel
    (`abaw_jax.models.attention`).
    """
    import jax

    from abaw_jax import extract, sharding
    from abaw_jax.models import encoders

    encoder = encoders.load_encoder(spec, pool="mean", image_size=image_size, dtype=dtype)
    module, variables, info = encoder.module, encoder.variables, encoder.info
    module = module.clone(attention_impl=attention_impl)
    mesh = extract.local_mesh()
    fn = extract.make_extract_fn(module, info, mesh)
    variables = jax.device_put(variables, sharding.replicated(mesh))
    images = np.random.default_rng(0).integers(0, 256, (batch, image_size, image_size, 3),
                                               dtype=np.uint8)
    x = jax.device_put(images, sharding.batch_sharding(mesh))
    # Compiled ahead of time: the FLOP count and the timed calls share one executable.
    compiled = fn.lower(variables, x).compile()

    def step() -> None:
        compiled(variables, x).block_until_ready()

    params = sum(leaf.size for leaf in jax.tree.leaves(variables))
    return step, xla_flops(compiled), params, module


def make_timm(vit: Any, batch: int, threads: int, compiled: bool = False
              ) -> tuple[Callable[[], None], int]:
    """``(step, params)``: one blocking batch of timm's ViT with the dims of abaw_jax's `vit`.

    Features only (no head), bf16 autocast on CUDA, `threads` CPU threads (set at every step, so
    that steps of differently threaded rows can alternate).
    """
    import timm
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = timm.create_model(
        TIMM_MODEL, pretrained=False, num_classes=0, img_size=vit.image_size,
        patch_size=vit.patch_size, embed_dim=vit.width, depth=vit.depth, num_heads=vit.num_heads,
        mlp_ratio=vit.mlp_dim / vit.width).eval().to(device)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, vit.image_size, vit.image_size, device=device)

    def step() -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            forward(x)
        if cuda:
            torch.cuda.synchronize()

    return step, sum(p.numel() for p in model.parameters())
