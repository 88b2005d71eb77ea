"""ViT-B/16 frame features with average pooling (system A's extractor) into a feature store.

  python -m abaw_jax.extract --config configs/extract_vit.py --workdir feats/vit \
      --config.frames=/data/affwild2 \
      --config.encoder=/weights/vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors \
      --config.frame_counts=../shared/data/affwild2_meta/counter_frame.csv
then train on it with --config.data.features=feats/vit.
Variants after the colon: `random` (random-init ViT-B/16, for benchmarks), `demo` (a tiny random
ViT on the demo dataset's 32 px JPEG frames, a laptop smoke test), `decode=N` (decode at N px on
the host and resize on the device: `decode=112` for Aff-Wild2's 112 px crops moves the upsampling
to the accelerator and sends 4x fewer bytes to it).
"""

from abaw_jax import config as config_lib



def get_config(arg=None):
    v = config_lib.parse_arg(arg, random=False, demo=False, decode=0)
    config = config_lib.extraction_config()
    config.encoder = ""
    config.pool = "mean"
    config.image_size = 224
    config.batch_size = 256
    config.dtype = "float16"
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
