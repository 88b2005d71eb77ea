"""Shared fixtures: a tiny demo dataset in the official layout and tiny training configs; a timm
ViT state dict for the weight-reading tests."""

from __future__ import annotations

import os
import pathlib

# Tests check behaviour, not speed: XLA's cheaper compile path (no LLVM and backend optimisation
# passes) cuts their compile time by about a third. Set before JAX is imported, so that the
# subprocesses the tests start (command lines, multi-process runs) inherit it; a test that
# measures speed runs with it off (JAX_DISABLE_MOST_OPTIMIZATIONS=0 in its environment).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# One OpenMP thread for the reference libraries (PyTorch, the BLAS under NumPy): the suite runs
# one pytest worker per core, and OpenMP threads that spin while another worker holds the core
# made a 5 s PyTorch parity test take over 60 s. XLA's own thread pool is not OpenMP.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

TINY_DIM = 32


def load_config(name: str, arg: str | None = None):
    """Loads `configs/<name>.py` the way the command line does."""
    from abaw_jax import config as config_lib
    return config_lib.load_config_file(ROOT / "configs" / f"{name}.py", arg)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> pathlib.Path:
    """A small demo dataset (a dozen short videos, 32-d features) built once per test session."""
    from abaw_jax.data import demo
    out = tmp_path_factory.mktemp("demo")
    return demo.build_demo(out / "affwild2", num_videos=12, seed=0, length_scale=0.03,
                           feature_sets={"vit": TINY_DIM, "openface": 17})


@pytest.fixture(scope="module")
def optimized_xla():
    """XLA's full optimisations for a module whose time goes into running compiled code (face
    detection over hundreds of real frames) rather than into compiling it."""
    import jax
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def tiny_config(task: str, root: pathlib.Path, **overrides):
    """A config of `task` with a tiny model and a short run on `root`."""
    c = load_config(task.lower(), "demo")
    c.data.root = str(root)
    c.data.seq_len = 16
    c.data.num_threads = 1
    c.model.d_model = 16
    c.model.num_heads = 2
    c.model.mlp_dim = 32
    c.model.num_layers = 1
    c.batch_size = 8
    c.total_steps = 6
    c.optimizer.warmup_steps = 2
    c.log_every = 2
    c.eval_every = 3
    c.checkpoint_every = 3
    c.progress = False
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def timm_state(width=32, depth=2, mlp=64, patch=8, grid=4, seed=0):
    """A random timm ViT state dict (numpy): ``depth`` blocks, a class token, a 10-class head."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    state = {"patch_embed.proj.weight": r(width, 3, patch, patch), "patch_embed.proj.bias": r(width),
             "cls_token": r(1, 1, width), "pos_embed": r(1, 1 + grid * grid, width),
             "norm.weight": r(width), "norm.bias": r(width), "head.weight": r(10, width), "head.bias": r(10)}
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": r(width), b + "norm1.bias": r(width),
            b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
            b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
            b + "norm2.weight": r(width), b + "norm2.bias": r(width),
            b + "mlp.fc1.weight": r(mlp, width), b + "mlp.fc1.bias": r(mlp),
            b + "mlp.fc2.weight": r(width, mlp), b + "mlp.fc2.bias": r(width)})
    return state


# The one place that marks tests slow. The fast tier (`-m "not slow"`) leaves out these parity
# and end-to-end tests, each about 4 s or more on 2 cores (mostly XLA compiles), those that need
# the trained runs of test_predict's fixture, and the files of _SLOW_FILES; CI runs everything.
# Of the parametrised tests in _FAST_PARAMS only the listed cases stay in the fast tier.
_SLOW_FILES = {
    "tests/test_benchmark.py",   # about 40 s on 2 cores, most of it XLA compiles
    "tests/test_faults.py",      # about 3 minutes: a killed subprocess and a rerun per case
}
_SLOW_TESTS = {
    "tests/test_fidelity.py::test_evaluate_reports_filtered_and_unfiltered_expr",
    "tests/test_fidelity.py::test_abaw7_task_models_each_give_their_own_outputs",
    "tests/test_fidelity.py::test_abaw7_model_is_static_per_frame",
    "tests/test_fidelity.py::test_feature_perturbation_moves_half_of_each_vector_in_training_only",
    "tests/test_fidelity.py::test_init_from_starts_from_another_runs_params",
    "tests/test_fidelity.py::test_evaluate_ensemble_command_line",
    "tests/test_fidelity.py::test_best_per_output_reads_each_output_from_its_best_parameters",
    "tests/test_predict.py::test_timings_flag_prints_each_stage",
    "tests/test_workdirs.py::test_another_config_changes_nothing_and_the_right_one_resumes",
    "tests/test_workdirs.py::test_altered_checkpoint_bytes_are_caught_and_set_aside",
    "tests/test_workdirs.py::test_nonfinite_message_names_the_checkpoint_verified_intact",
    "tests/test_workdirs.py::test_nan_predictions_stop_evaluate_naming_video_split_and_store",
    "tests/test_workdirs.py::test_test_video_without_features_is_an_error_unless_allowed",
    "tests/test_workdirs.py::test_damaged_best_checkpoint_falls_back_naming_the_step",
    "tests/test_workdirs.py::test_full_disk_stops_at_the_failing_save_with_one_line",
    "tests/test_workdirs.py::test_read_only_workdir_is_refused_before_any_device_work",
    "tests/test_workdirs.py::test_bad_command_line_is_one_error_line",
    "tests/test_workdirs.py::test_unknown_variant_lists_the_known_ones_and_debug_shows_the_traceback",
    "tests/test_workdirs.py::test_metrics_hold_each_step_once_after_a_resume",
    "tests/test_reproduce.py::test_system_a_tiny_chains_its_stages_and_a_rerun_skips_them",
    "tests/test_reproduce.py::test_sigterm_mid_stage_then_rerun_gives_the_same_submission",
    "tests/test_reproduce.py::test_system_b_tiny_from_mae_to_fold_ensemble",
    "tests/test_reproduce.py::test_fold_ensemble_with_its_defaults_scores_members_and_prints_what_it_wrote",
    "tests/test_reproduce.py::test_system_c_runs_when_the_demo_sets_stand_in",
    "tests/test_reproduce.py::test_b_pretrains_mae_on_the_extra_face_sources_it_is_given",
    "tests/test_reproduce.py::test_evaluate_takes_a_saved_config_json_and_names_a_missing_one",
    "tests/test_reproduce.py::test_extraction_runs_at_the_encoders_own_size",
    "tests/test_reproduce.py::test_scripts_take_config_overrides_like_every_command",
    "tests/test_device_bank.py::test_training_losses_identical_with_bank_on_and_off",
    "tests/test_extract.py::test_sigkill_subprocess_random_spec_two_devices_then_resume",
    "tests/test_faces.py::test_every_ckplus_face_is_found",
    "tests/test_faces.py::test_fer_woman2_has_one_track_and_a_face_in_almost_every_frame",
    "tests/test_faces.py::test_gaps_cut_from_a_real_track_are_bridged",
    "tests/test_mtl_train.py::test_every_listed_frame_gets_one_prediction_in_order",
    "tests/test_multiprocess.py::test_two_processes_train_like_one",
    "tests/test_multiprocess.py::test_sigterm_to_one_process_stops_both_at_one_step",
    "tests/test_pretrain.py::test_mae_run_resumes_and_finetune_starts_from_it",
    "tests/test_reliability.py::test_resume_is_bit_exact",
    "tests/test_reliability.py::test_sigterm_saves_and_rerun_matches_uninterrupted",
    "tests/test_reliability.py::test_interrupted_saves_are_ignored_and_removed",
    "tests/test_reliability.py::test_resume_reevaluates_a_step_whose_best_state_was_kept",
    "tests/test_reliability.py::test_checkpoint_moves_between_device_counts",
    "tests/test_systems.py::test_paper_size_config_trains",
    "tests/test_systems.py::test_fold_config_trains",
    "tests/test_systems.py::test_ensemble_averages_members",
    "tests/test_systems.py::test_ablation_script_writes_table",
    "tests/test_tfds.py::test_ckplus_as_tfds_reads_back_and_trains_like_the_folder",
    "tests/test_train.py::test_eight_devices_match_one",
    "tests/test_usability.py::test_damaged_latest_checkpoint_resumes_from_previous",
    "tests/test_encoders.py::test_encoder_directory_round_trip",
    "tests/test_encoders.py::test_resnet_fn_resizes_to_the_requested_size",
    "tests/test_losses.py::test_cross_entropy_and_its_gradient_match_torch",
    "tests/test_vit.py::test_dropout_and_drop_path_only_in_training",
    "tests/test_temporal.py::test_attention_dropout_defaults_to_dropout_and_leaves_inference_alone",
    "tests/test_resnet.py::test_tiny_config_trains_batch_stats",
    "tests/test_reliability.py::test_cli_keeps_traceback_of_unexpected_errors",
    "tests/test_attention.py::test_einsum_gradients_match_xla_kernel",
    "tests/test_predict.py::test_temporal_outputs_match_the_evaluation_path",
    "tests/test_predict.py::test_clip_without_any_face_warns",
    "tests/test_predict.py::test_frame_folder_equals_array",
    "tests/test_predict.py::test_encoder_width_must_match_the_model",
    "tests/test_predict.py::test_demo_runs_need_an_explicit_encoder",
    "tests/test_predict.py::test_encoder_read_from_the_store_meta",
    "tests/test_predict.py::test_bad_encoder_spec_and_missing_workdir",
    "tests/test_predict.py::test_bad_videos_name_the_file",
    "tests/test_temporal.py::test_input_projection_is_an_option_and_automatic_when_widths_differ",
    "tests/test_mae.py::test_hf_encoder_export_matches_hf_vitmae_model",
    "tests/test_faces.py::test_aligned_crop_puts_the_face_on_the_template",
    "tests/test_fusion.py::test_missing_set_is_named",
    "tests/test_tcn.py::test_earlier_defaults_remain_as_named_options",
    "tests/test_reliability.py::test_nan_step_is_not_offered_as_best",
    "tests/test_blazeface.py::test_detections_agree_with_an_independent_decoding",
    "tests/test_blazeface.py::test_raw_outputs_equal_the_litert_interpreter",
    "tests/test_blazeface.py::test_shipped_weights_load_without_the_tflite_package_and_about_1_mb",
    "tests/test_config.py::test_cli_rejects_bad_value_and_type",
    "tests/test_encoders.py::test_load_encoder_and_feature_fn",
    "tests/test_faces.py::test_face_free_photographs_give_no_detection",
    "tests/test_fusion.py::test_encoder_input_matches_a_numpy_reference",
    "tests/test_fusion.py::test_position_encoding_variants",
    "tests/test_mae.py::test_parity_with_hugging_face",
    "tests/test_mae.py::test_patchify_roundtrip_and_random_noise_rng",
    "tests/test_mtl_train.py::test_one_mtl_run_fills_every_column_of_predict",
    "tests/test_predict.py::test_fer_video_to_csv_and_plot",
    "tests/test_predict.py::test_fer_woman2_out_of_the_box",
    "tests/test_predict.py::test_restore_takes_evaluates_checkpoint_and_feature_store",
    "tests/test_predict.py::test_transformer_fed_features_of_its_own_width_restores",
    "tests/test_predict.py::test_no_face_frames_are_flagged_and_predicted",
    "tests/test_reliability.py::test_cli_bad_input_is_one_line_error",
    "tests/test_reliability.py::test_nan_gradient_with_finite_loss_stops",
    "tests/test_resnet.py::test_bottleneck_resnet_matches_torchvision",
    "tests/test_resnet.py::test_resnet18_matches_torchvision",
    "tests/test_tcn.py::test_batch_norm_head_needs_its_statistics_and_names_what_to_pass",
    "tests/test_tcn.py::test_train_state_helpers_update_and_use_the_batch_statistics",
    "tests/test_temporal.py::test_default_adds_positions_to_the_features_without_a_projection",
    "tests/test_temporal.py::test_encoder_block_matches_torch_encoder_layer",
    "tests/test_temporal.py::test_rows_without_any_present_frame_stay_finite_with_finite_gradients",
    "tests/test_tfds.py::test_package_never_imports_tensorflow",
    "tests/test_train.py::test_nonfinite_loss_stops_and_keeps_last_good_checkpoint",
    "tests/test_train.py::test_rerun_resumes_at_saved_step",
    "tests/test_train.py::test_skip_nonfinite_counts_skipped_updates",
    "tests/test_usability.py::test_early_stopping_stops_after_patience_evaluations",
    "tests/test_usability.py::test_eval_lines_name_the_metric",
    "tests/test_usability.py::test_evaluate_with_another_tasks_config_names_the_workdirs_task",
    "tests/test_weights.py::test_original_npz_layout_loads_and_matches",
    "tests/test_weights.py::test_timm_vit_small_patch32_matches_timm",
    "tests/test_weights.py::test_timm_vit_tiny_matches_timm_for_every_pool",
}
_FAST_PARAMS = {
    "tests/test_blazeface.py::test_shipped_weights_are_those_of_the_tflite_files": ('short_range',),
    "tests/test_train.py::test_train_then_evaluate": ('VA',),
    "tests/test_mtl_train.py::test_mtl_trains_and_writes_checked_submissions": ('transformer',),
    "tests/test_systems.py::test_demo_variant_trains": ('va-transformer',),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name, _, param = item.nodeid.partition("[")
        param = param.rstrip("]")
        slow = (name in _SLOW_TESTS or name.partition("::")[0] in _SLOW_FILES
                or (name in _FAST_PARAMS and param not in _FAST_PARAMS[name]))
        if slow:
            item.add_marker(pytest.mark.slow)
