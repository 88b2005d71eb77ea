"""MAE pretraining throughput (images/s of one train step): abaw_jax vs Hugging Face in PyTorch.

  python scripts/bench_mae.py                  # ViT-B/16 at 224 px, 8 x 512 decoder, batch 8
  python scripts/bench_mae.py --small          # 48 px, patch 6, 192 x 4 encoder, 128 x 2 decoder
  python scripts/bench_mae.py --batch 64 --steps 10

Both sides run the same model (same dims, 75% masking, norm-pix loss) on the same batch: a
forward pass, the backward pass and an AdamW update. abaw_jax's step is one jitted function
with donated state (compiled before timing); PyTorch runs eagerly (ViTMAEForPreTraining with
SDPA attention). Times are medians over ``--steps`` after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_jax.models import mae as mae_lib  # noqa: E402

BASE = dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16, image_size=224,
            decoder_width=512, decoder_depth=8, decoder_num_heads=16, decoder_mlp_dim=2048)
SMALL = dict(width=192, depth=4, num_heads=3, mlp_dim=768, patch_size=6, image_size=48,
             decoder_width=128, decoder_depth=2, decoder_num_heads=4, decoder_mlp_dim=512)


def _median_time(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_jax(dims: dict, batch: int, warmup: int, steps: int) -> float:
    """Seconds per jitted train step of abaw_jax's MAE."""
    model = mae_lib.mae_from_config(dict(dims, norm_pix_loss=True))
    s = dims["image_size"]
    images = jax.random.normal(jax.random.key(0), (batch, s, s, 3))
    params = model.init({"params": jax.random.key(1), "masking": jax.random.key(2)}, images[:1])["params"]
    tx = optax.adamw(1e-4, b2=0.95, weight_decay=0.05)
    state = (params, tx.init(params), jax.random.key(3))

    @jax.jit
    def train_step(state, images):
        params, opt_state, rng = state
        rng, mask_rng = jax.random.split(rng)
        loss_fn = lambda p: model.apply({"params": p}, images, train=True, rngs={"masking": mask_rng}).loss
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, rng), loss

    train_step = jax.jit(train_step.__wrapped__, donate_argnums=(0,))
    holder = {"state": state}

    def step():
        holder["state"], loss = train_step(holder["state"], images)
        loss.block_until_ready()

    return _median_time(step, warmup, steps)


def bench_torch(dims: dict, batch: int, warmup: int, steps: int) -> float | None:
    """Seconds per eager train step of Hugging Face ViTMAEForPreTraining (None without torch)."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    config = transformers.ViTMAEConfig(
        hidden_size=dims["width"], num_hidden_layers=dims["depth"], num_attention_heads=dims["num_heads"],
        intermediate_size=dims["mlp_dim"], patch_size=dims["patch_size"], image_size=dims["image_size"],
        decoder_hidden_size=dims["decoder_width"], decoder_num_hidden_layers=dims["decoder_depth"],
        decoder_num_attention_heads=dims["decoder_num_heads"],
        decoder_intermediate_size=dims["decoder_mlp_dim"], mask_ratio=0.75, norm_pix_loss=True,
        layer_norm_eps=1e-6)
    model = transformers.ViTMAEForPreTraining(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    s = dims["image_size"]
    images = torch.randn(batch, 3, s, s)

    def step():
        opt.zero_grad(set_to_none=True)
        model(images).loss.backward()
        opt.step()

    return _median_time(step, warmup, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 48 px CK+-sized model")
    parser.add_argument("--batch", type=int, default=0, help="0: 8 (ViT-B) or 64 (--small)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no_torch", action="store_true")
    args = parser.parse_args()
    dims = SMALL if args.small else BASE
    batch = args.batch or (64 if args.small else 8)
    name = "small 48px/6" if args.small else "ViT-B/16 224px"
    print(f"MAE train step, {name}, batch {batch}, 75% masking; jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind} ({jax.device_count()} devices), {platform.processor() or platform.machine()}")
    t_jax = bench_jax(dims, batch, args.warmup, args.steps)
    t_torch = None if args.no_torch else bench_torch(dims, batch, args.warmup, args.steps)
    print(f"{'implementation':<36}{'s/step':>10}{'images/s':>12}")
    print(f"{'abaw_jax (jit)':<36}{t_jax:>10.4f}{batch / t_jax:>12.1f}")
    if t_torch is not None:
        import torch
        print(f"{'HF ViTMAEForPreTraining (torch eager)':<36}{t_torch:>10.4f}{batch / t_torch:>12.1f}")
        print(f"speed-up {t_torch / t_jax:.2f}x (torch {torch.__version__}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
