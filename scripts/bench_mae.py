"""MAE pretraining steps, abaw_jax against Hugging Face: the two sides of benchmark.py's "MAE" rows.

Both sides train the same model (same dims, 75% masking, norm-pix loss) on the same batch shape
of random images: a forward pass, the backward pass and an AdamW update. abaw_jax's step is one
jitted function with donated state, compiled before timing, in the compute dtype it is given
(benchmark.py: bfloat16 on GPU); PyTorch runs Hugging Face's ViTMAEForPreTraining with SDPA
attention, eager or after torch.compile, under bf16 autocast on CUDA. `python scripts/benchmark.py --systems mae`
prints these rows alone (`--small` on a CPU, `--peak-tflops 989` on a GPU).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_jax import sharding  # noqa: E402
from abaw_jax.models import mae as mae_lib  # noqa: E402
from scripts.common import xla_flops  # noqa: E402

BASE = dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16, image_size=224,
            decoder_width=512, decoder_depth=8, decoder_num_heads=16, decoder_mlp_dim=2048)
SMALL = dict(width=192, depth=4, num_heads=3, mlp_dim=768, patch_size=6, image_size=48,
             decoder_width=128, decoder_depth=2, decoder_num_heads=4, decoder_mlp_dim=512)
# The tests' MAE: 32 px, patch 8, 2 x 32 encoder, 1 x 32 decoder.
TINY = {key: mae_lib.tiny_config()[key] for key in BASE}


def make_jax(dims: dict, batch: int, dtype: Any = jnp.float32, attention_impl: str = "default"
             ) -> tuple[Callable[[], None], float, int]:
    """``(step, flops, params)``: one blocking train step of abaw_jax's MAE, its XLA FLOP count
    and the model's parameter count. The step's state lives in the closure (donated each step)."""
    model = mae_lib.mae_from_config(dict(dims, norm_pix_loss=True, dtype=dtype,
                                         attention_impl=attention_impl))
    s = dims["image_size"]
    images = jax.random.normal(jax.random.key(0), (batch, s, s, 3))
    # Jitted: run op by op, the initialisation would compile each of its many small ops.
    params = jax.jit(model.init)({"params": jax.random.key(1), "masking": jax.random.key(2)},
                                 images[:1])["params"]
    tx = optax.adamw(1e-4, b2=0.95, weight_decay=0.05)

    def train_step(state, images):
        params, opt_state, rng = state
        rng, mask_rng = jax.random.split(rng)

        def loss_fn(p):
            return model.apply({"params": p}, images, train=True, rngs={"masking": mask_rng}).loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, rng), loss

    holder = {"state": (params, jax.jit(tx.init)(params), jax.random.key(3))}
    compiled = sharding.jit(train_step, None, donate_argnums=(0,)).lower(holder["state"], images).compile()

    def step() -> None:
        holder["state"], loss = compiled(holder["state"], images)
        loss.block_until_ready()

    return step, xla_flops(compiled), sum(x.size for x in jax.tree.leaves(params))


def make_torch(dims: dict, batch: int, threads: int, compiled: bool = False
               ) -> tuple[Callable[[], None], int]:
    """``(step, params)``: one blocking train step of Hugging Face ViTMAEForPreTraining with
    `dims`, and its trainable parameter count (the frozen sin-cos tables left out).

    `threads` CPU threads are set at every step, so that steps of differently threaded rows can
    alternate.
    """
    import torch
    import transformers

    config = transformers.ViTMAEConfig(
        hidden_size=dims["width"], num_hidden_layers=dims["depth"],
        num_attention_heads=dims["num_heads"], intermediate_size=dims["mlp_dim"],
        patch_size=dims["patch_size"], image_size=dims["image_size"],
        decoder_hidden_size=dims["decoder_width"], decoder_num_hidden_layers=dims["decoder_depth"],
        decoder_num_attention_heads=dims["decoder_num_heads"],
        decoder_intermediate_size=dims["decoder_mlp_dim"], mask_ratio=0.75, norm_pix_loss=True,
        layer_norm_eps=1e-6, attn_implementation="sdpa")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(config).to(device).train()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    s = dims["image_size"]
    images = torch.randn(batch, 3, s, s, device=device)

    def step() -> None:
        torch.set_num_threads(threads)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = forward(pixel_values=images).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()   # waits for the device

    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)
