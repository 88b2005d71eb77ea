"""Frame features into a feature store: ViT-B/16 with average pooling (system A's extractor) by
default, the fine-tuned MAE encoder (system B) or a ResNet-18 (system C) as variants.

System A (paper: ViT-Base pretrained on ImageNet-21k, average pooling of the last layer's tokens
instead of the class token, after "Better plain ViT baselines", whose ViT has no class token:
so the mean of the 196 patch tokens after the final LayerNorm, pool="gap"):
  python -m abaw_jax.extract --config configs/extract_vit.py --workdir /data/affwild2/features/vit \
      --config.frames=/data/affwild2 \
      --config.encoder=/weights/vit_base_patch16_224.orig_in21k.safetensors \
      --config.frame_counts=../shared/data/affwild2_meta/counter_frame.csv
System B (the MAE-pretrained, expression-fine-tuned encoder, pooled as fine-tuning pooled it):
  python -m abaw_jax.extract --config configs/extract_vit.py:mae --workdir /data/affwild2/features/mae_ft \
      --config.frames=/data/affwild2 --config.encoder=runs/ft/encoder
System C's ResNet-18 (512-d, MS-Celeb-1M weights as torchvision-layout .safetensors):
  python -m abaw_jax.extract --config configs/extract_vit.py:resnet18 --workdir /data/affwild2/features/resnet18 \
      --config.frames=/data/affwild2 --config.encoder=/weights/resnet18_msceleb.safetensors
Variants after the colon: `mae`, `resnet18`; `pool=P` (gap | mean, which averages the class
token too | cls | pooler, the tanh dense layer over the class token of Hugging Face checkpoints
that system A's code used); `random` (random-init ViT-B/16, for benchmarks); `demo` (a tiny
random ViT on the demo dataset's 32 px JPEG frames, a laptop smoke test); `decode=N` (decode at N
px on the host and resize on the device: `decode=112` for Aff-Wild2's 112 px crops moves the
upsampling to the accelerator and sends 4x fewer bytes to it).
Frames are encoded at the encoder's own image size (`image_size = 0`) unless
`--config.image_size=N` asks for another; the store's meta.json records the size and the
encoder's architecture.
"""

from abaw_jax import config as config_lib


def get_config(arg=None):
    v = config_lib.parse_arg(arg, random=False, demo=False, decode=0, mae=False, resnet18=False,
                             pool="")
    config = config_lib.extraction_config()
    config.encoder = ""
    config.pool = "gap"
    # The encoder's own input size (224 for ViT-B/16 weights, the fine-tuned encoder's for :mae);
    # another size resizes its position embeddings, and the log and meta.json say so.
    config.image_size = 0
    config.batch_size = 256
    config.dtype = "float16"
    if v.mae:
        config.pool = ""            # the encoder directory's own pooling
    if v.resnet18:
        config.pool = ""
        config.image_size = 112     # Aff-Wild2's aligned crops at their own size
    if v.pool:
        config.pool = v.pool
    if v.random:
        config.encoder = "vit:B/16"
    if v.demo:
        config.encoder = "vit:Ti/8,width=32,depth=2,num_heads=2,mlp_dim=64"
        config.image_size = 32
        config.batch_size = 64
        config.num_threads = 2
    if v.decode:
        config.decode_size = v.decode
    return config
