"""MAE model: parity with Hugging Face ViTMAEForPreTraining, masking, loss, encoder export."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from abaw_jax.models import mae as mae_lib
from abaw_jax.models import weights as weights_lib

TINY = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, image_size=32,
            decoder_width=24, decoder_depth=2, decoder_num_heads=3, decoder_mlp_dim=40)


def _hf_sincos(dim: int, grid: int):
    """The MAE table from Hugging Face's own builder, with the h/w halves swapped as its init does."""
    from transformers.models.vit_mae import modeling_vit_mae
    table = modeling_vit_mae.build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
    half = dim // 2
    return np.concatenate([table[:, half:].numpy(), table[:, :half].numpy()], axis=1)[None]


def _hf_model(tmp_path, norm_pix_loss: bool, seed: int = 0, posemb: str = "sincos"):
    """A random tiny ViTMAEForPreTraining saved with save_pretrained, and the torch model.

    ``posemb="sincos"`` puts MAE's fixed tables in (as released checkpoints have them; a fresh
    transformers 5 model leaves them zero), ``"random"`` puts arbitrary ones.
    """
    torch = pytest.importorskip("torch", reason="parity needs PyTorch (the reference)")
    transformers = pytest.importorskip("transformers", reason="parity needs Hugging Face transformers")
    torch.manual_seed(seed)
    config = transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_channels=3, decoder_hidden_size=24,
        decoder_num_hidden_layers=2, decoder_num_attention_heads=3, decoder_intermediate_size=40,
        layer_norm_eps=1e-6, mask_ratio=0.75, norm_pix_loss=norm_pix_loss, hidden_act="gelu",
        attn_implementation="eager")
    model = transformers.ViTMAEForPreTraining(config).eval()
    with torch.no_grad():
        # Non-zero token and bias values so that every parameter's mapping is exercised.
        for name, p in model.named_parameters():
            if "mask_token" in name or "cls_token" in name or name.endswith(".bias"):
                p.normal_(0.0, 0.1)
        for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
            if posemb == "sincos":
                table.copy_(torch.from_numpy(_hf_sincos(table.shape[-1], 4)))
            else:
                table.normal_(0.0, 0.5)
    model.save_pretrained(tmp_path)
    return torch, model


@pytest.mark.parametrize("norm_pix_loss,posemb", [(False, "sincos"), (True, "sincos"),
                                                   (False, "random")])
def test_parity_with_hugging_face(tmp_path, norm_pix_loss, posemb):
    torch, model = _hf_model(tmp_path, norm_pix_loss, posemb=posemb)
    mae, params, info = weights_lib.load_hf_mae(tmp_path)
    assert mae.posemb == ("sincos" if posemb == "sincos" else "learn")
    assert mae.norm_pix_loss == norm_pix_loss
    assert (mae.decoder_width, mae.decoder_depth, mae.decoder_num_heads) == (24, 2, 3)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    noise = rng.uniform(size=(3, 16)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(images), noise=torch.from_numpy(noise))
    out = mae.apply({"params": params}, jnp.asarray(images.transpose(0, 2, 3, 1)),
                    noise=jnp.asarray(noise))
    np.testing.assert_allclose(np.asarray(out.mask), ref.mask.numpy(), atol=0)
    np.testing.assert_array_equal(np.asarray(out.ids_restore), ref.ids_restore.numpy())
    np.testing.assert_allclose(np.asarray(out.pred), ref.logits.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(float(out.loss), float(ref.loss), atol=1e-4, rtol=1e-4)


def test_hf_encoder_export_matches_hf_vitmae_model(tmp_path):
    """The encoder in ViT layout reproduces ViTMAEModel's tokens when nothing is masked."""
    torch, model = _hf_model(tmp_path, False, seed=1)
    mae, params, _ = weights_lib.load_hf_mae(tmp_path)
    vit = mae_lib.encoder_vit(mae, pool="cls")
    images = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    model.config.mask_ratio = 0.0
    noise = np.tile(np.arange(16, dtype=np.float32), (2, 1))   # identity order
    with torch.no_grad():
        ref = model.vit(torch.from_numpy(images), noise=torch.from_numpy(noise)).last_hidden_state
    _, tokens = vit.apply({"params": mae_lib.encoder_params(mae, params)},
                          jnp.asarray(images.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(tokens), ref.numpy(), atol=1e-4, rtol=1e-4)


def test_sincos_matches_hugging_face_table():
    pytest.importorskip("torch", reason="needs PyTorch")
    pytest.importorskip("transformers", reason="needs Hugging Face transformers")
    np.testing.assert_allclose(mae_lib.sincos_posemb((5, 5), 48), _hf_sincos(48, 5), atol=1e-6)
    # Plain formula for one entry: position (row 1, col 3), frequency index 2 of 12.
    w = 1.0 / 10000 ** (2 / 12)
    table = mae_lib.sincos_posemb((5, 5), 48)
    row = table[0, 1 + 1 * 5 + 3]
    np.testing.assert_allclose([row[2], row[12 + 2], row[24 + 2], row[36 + 2]],
                               [np.sin(3 * w), np.cos(3 * w), np.sin(1 * w), np.cos(1 * w)], atol=1e-6)


def test_masking_keeps_a_quarter_and_restores_order():
    b, n, d = 4, 64, 3
    x = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[None, :, None], (b, n, d))
    noise = jax.random.uniform(jax.random.key(0), (b, n))
    visible, mask, ids_restore = mae_lib.random_masking(x, noise, 0.75)
    assert visible.shape == (b, 16, d)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), [48] * b)
    noise_np = np.asarray(noise)
    for i in range(b):
        kept = np.sort(np.argsort(noise_np[i])[:16])
        # The visible patches are the 16 lowest-noise ones, and exactly those are unmasked.
        np.testing.assert_array_equal(np.sort(np.asarray(visible[i, :, 0])), kept)
        np.testing.assert_array_equal(np.flatnonzero(np.asarray(mask[i]) == 0), kept)
        shuffled = np.asarray(x[i, :, 0])[np.argsort(noise_np[i])]
        np.testing.assert_array_equal(shuffled[np.asarray(ids_restore[i])], np.arange(n))


def test_norm_pix_loss_against_numpy():
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(2, 16, 16, 3))
    pred = rng.normal(size=(2, 4, 192))
    mask = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], np.float64)
    # Plain float64 reference: patches (row, col, channel), unbiased variance, eps 1e-6.
    target = np.zeros((2, 4, 192))
    for b in range(2):
        for r in range(2):
            for c in range(2):
                patch = images[b, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8, :].reshape(-1)
                target[b, r * 2 + c] = (patch - patch.mean()) / np.sqrt(patch.var(ddof=1) + 1e-6)
    expected = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    got_target = mae_lib.patch_targets(jnp.asarray(images, jnp.float32), 8, True)
    np.testing.assert_allclose(np.asarray(got_target), target, atol=1e-4)
    got = mae_lib.masked_mse(jnp.asarray(pred, jnp.float32), got_target, jnp.asarray(mask, jnp.float32))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_patchify_roundtrip_and_random_noise_rng():
    x = jax.random.normal(jax.random.key(0), (2, 16, 24, 3))
    np.testing.assert_array_equal(mae_lib.unpatchify(mae_lib.patchify(x, 8), 8, (2, 3)), x)
    mae = mae_lib.mae_from_config(TINY)
    images = jnp.zeros((2, 32, 32, 3))
    variables = jax.jit(lambda: mae.init({"params": jax.random.key(0),
                                          "masking": jax.random.key(1)}, images))()
    masks = jax.jit(lambda k: mae.apply(variables, images, rngs={"masking": k}).mask)
    assert not np.array_equal(np.asarray(masks(jax.random.key(5))),
                              np.asarray(masks(jax.random.key(6))))
    assert "pos_embedding" not in variables["params"]    # fixed sin-cos tables are not trained
    with pytest.raises(ValueError, match=r"noise must be \[B, N\]"):
        mae.apply(variables, images, noise=jnp.zeros((2, 15)))


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown MAE config keys \['widht'\]"):
        mae_lib.mae_from_config(dict(TINY, widht=3))
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        mae_lib.mae_from_config(dict(TINY, mask_ratio=1.0))
    with pytest.raises(ValueError, match="decoder_width 24 is not divisible by decoder_num_heads 5"):
        mae_lib.mae_from_config(dict(TINY, decoder_num_heads=5))


def test_hf_checkpoint_without_decoder_is_rejected(tmp_path):
    model = _hf_model(tmp_path, False)[1]
    model.vit.save_pretrained(tmp_path / "encoder_only")
    with pytest.raises(weights_lib.WeightsError, match="encoder_only: no MAE decoder blocks"):
        weights_lib.load_hf_mae(tmp_path / "encoder_only")
