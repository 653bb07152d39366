"""Which fuzz test covers each public callable of crfrnn (``tests/test_api.py`` ``PUBLIC_API``), and which are
exempt, with the reason. ``test_fuzz_registry.py`` fails when a public callable is in neither: a new public
function joins :data:`FUZZED` (with a fuzz test in ``tests/fuzz``) or :data:`EXEMPT` (with a reason). Commands
and the files they read join :data:`fuzz_files.COMMAND_CASES`.

Names are the first public spelling found in ``PUBLIC_API``'s order (``crfrnn.dense_crf``, not
``crfrnn.dense.dense_crf``).
"""

from __future__ import annotations

#: public name -> the test (``file::function`` under tests/fuzz) that fuzzes it
FUZZED: dict[str, str] = {
    "crfrnn.dense_crf": "test_fuzz_functions.py::test_dense_crf",
    "crfrnn.mean_field": "test_fuzz_functions.py::test_mean_field",
    "crfrnn.compat.DenseCRF2D": "test_fuzz_functions.py::test_compat_densecrf2d",
    "crfrnn.CrfRnn": "test_fuzz_public.py::test_crfrnn_module",
    "crfrnn.infer": "test_fuzz_public.py::test_infer",
    "crfrnn.Pairwise": "test_fuzz_public.py::test_infer",
    "crfrnn.dense_crf_loss": "test_fuzz_public.py::test_dense_crf_loss",
    "crfrnn.fit_crf": "test_fuzz_public.py::test_fit_crf",
    "crfrnn.gaussian_filter": "test_fuzz_public.py::test_gaussian_filter",
    "crfrnn.unary_from_probs": "test_fuzz_public.py::test_unaries",
    "crfrnn.unary_from_labels": "test_fuzz_public.py::test_unaries",
    "crfrnn.compat.unary_from_softmax": "test_fuzz_public.py::test_unaries",
    "crfrnn.compat.unary_from_labels": "test_fuzz_public.py::test_unaries",
    "crfrnn.compat.create_pairwise_bilateral": "test_fuzz_public.py::test_unaries",
    "crfrnn.io.read_scores": "test_fuzz_public.py::test_read_scores_and_guides",
    "crfrnn.io.read_guide": "test_fuzz_public.py::test_read_scores_and_guides",
    "crfrnn.io.read_volume_scores": "test_fuzz_public.py::test_read_scores_and_guides",
    "crfrnn.metrics.confusion_matrix": "test_fuzz_public.py::test_metrics",
    "crfrnn.metrics.segmentation_metrics": "test_fuzz_public.py::test_metrics",
    "crfrnn.metrics.boundary_accuracy": "test_fuzz_public.py::test_metrics",
    "crfrnn.metrics.boundary_mask": "test_fuzz_public.py::test_metrics",
    "crfrnn.metrics.boundary_band": "test_fuzz_public.py::test_metrics",
    "crfrnn.metrics.metrics_from_confusion_matrix": "test_fuzz_public.py::test_metrics",
    "crfrnn.cli.main": "test_fuzz_files.py::test_hostile_file",
    **{f"crfrnn.cli.{c}.run": "test_fuzz_files.py::test_hostile_file" for c in ("evaluate", "fit", "refine")},
    **{f"crfrnn.cli.{c}.run": "test_fuzz_files.py::test_hostile_file" for c in ("segment", "train")},
    "crfrnn.io.read_rgb": "test_fuzz_files.py::test_hostile_file",
    "crfrnn.io.load_checkpoint": "test_fuzz_files.py::test_hostile_file",
    "crfrnn.io.load_model": "test_fuzz_files.py::test_hostile_file",
    "crfrnn.models.load_pretrained": "test_fuzz_files.py::test_hostile_file",
    "crfrnn.models.detect_format": "test_fuzz_files.py::test_hostile_file",
    "crfrnn.workflow.load_config": "test_fuzz_files.py::test_hostile_file",
    "crfrnn.workflow.train": "test_fuzz_files.py::test_hostile_file",
}

_TYPES = "a type with no behaviour of its own to fuzz (a result, an error, a named tuple or a configuration)"
_NEXT = "not fuzzed yet (issue 25 follow-up): a random-input test is still to be written"
_DATA = "reads a data set folder or builds tensors from one; its files are fuzzed through crfrnn train (folder)"
_MODEL = "builds a network from validated keyword arguments; fuzzing would only train or allocate at random"
_WRITE = "writes files (atomically, via crfrnn._utils.files); its inputs are produced by the library itself"
_PURE = "a constant lookup or formatting helper with no numeric input to fuzz"

#: public name -> why it has no fuzz test
EXEMPT: dict[str, str] = {
    **dict.fromkeys(
        [
            "crfrnn.FitResult",
            "crfrnn.io.MemoryLimitError",
            "crfrnn.io.ScoreMap",
            "crfrnn.io.Guide",
            "crfrnn.models.Conventions",
            "crfrnn.models.Segmentation",
            "crfrnn.workflow.TrainConfig",
            "crfrnn.workflow.ReproduceConfig",
            "crfrnn.workflow.TrainingError",
            "crfrnn.cli.CommandError",
            "crfrnn.compat.KernelType",
            "crfrnn.compat.NormalizationType",
            "crfrnn.KernelCache",
        ],
        _TYPES,
    ),
    **dict.fromkeys(
        [
            "crfrnn.crf_energy",
            "crfrnn.kl_divergence",
            "crfrnn.energy.dense_crf_energy",
            "crfrnn.energy.dense_crf_kernels",
            "crfrnn.lattice_filter",
            "crfrnn.PermutohedralLattice",
            "crfrnn.GaussianKernel",
            "crfrnn.lattice.exact.exact_gaussian_filter",
            "crfrnn.bilateral_features",
            "crfrnn.spatial_features",
            "crfrnn.position_features",
            "crfrnn.crf.guide_features",
            "crfrnn.crf.label_transform",
            "crfrnn.crf.pairwise.build_kernels",
            "crfrnn.crf.pairwise.image_kernels",
            "crfrnn.crf.pairwise.pairwise_logits",
            "crfrnn.compat.DenseCRF",
            "crfrnn.compat.compute_unary",
            "crfrnn.compat.softmax_to_unary",
            "crfrnn.compat.create_pairwise_gaussian",
            "crfrnn.fit.degraded_probs",
            "crfrnn.fit.to_mean_field",
            "crfrnn.io.labels_of",
            "crfrnn.io.check_memory",
            "crfrnn.io.estimate_memory",
            "crfrnn.metrics.BoundaryAccuracy",
            "crfrnn.metrics.ConfusionMatrix",
            "crfrnn.models.resize_for_network",
            "crfrnn.models.segment_images",
            "crfrnn.params.check_params",
            "crfrnn.load_params",
            "crfrnn.visualize.colorize_labels",
            "crfrnn.visualize.label_overlay",
            "crfrnn.visualize.make_overlay",
            "crfrnn.workflow.parse_shard",
            "crfrnn.workflow.take_shard",
            "crfrnn.workflow.segmentation_loss",
            "crfrnn.data.colorize",
            "crfrnn.data.load_label_png",
            "crfrnn.data.scribbles_from_mask",
        ],
        _NEXT,
    ),
    **dict.fromkeys(
        [
            "crfrnn.data.CenterCrop",
            "crfrnn.data.Compose",
            "crfrnn.data.PadTo",
            "crfrnn.data.RandomCrop",
            "crfrnn.data.RandomHorizontalFlip",
            "crfrnn.data.RandomScale",
            "crfrnn.data.SBDSegmentation",
            "crfrnn.data.ScribbleDataset",
            "crfrnn.data.SegmentationFolder",
            "crfrnn.data.SyntheticShapes",
            "crfrnn.data.VOCSegmentation",
            "crfrnn.data.pad_collate",
            "crfrnn.data.synthetic_splits",
            "crfrnn.data.voc_train_aug",
            "crfrnn.workflow.build_datasets",
            "crfrnn.io.pair_by_stem",
            "crfrnn.io.is_array_path",
        ],
        _DATA,
    ),
    **dict.fromkeys(
        [
            "crfrnn.models.CaffeInput",
            "crfrnn.models.CrfRnnSegmenter",
            "crfrnn.models.FCN8s",
            "crfrnn.models.SmallFCN",
            "crfrnn.models.create",
            "crfrnn.models.register_model",
            "crfrnn.models.released_network",
            "crfrnn.workflow.build_model",
            "crfrnn.workflow.build_optimizer",
            "crfrnn.fit.width_gradients_available",
            "crfrnn.workflow.predict",
            "crfrnn.workflow.evaluate",
            "crfrnn.workflow.search_dense_crf",
            "crfrnn.workflow.reproduce",
            "crfrnn.workflow.check_claims",
            "crfrnn.workflow.summarize",
        ],
        _MODEL,
    ),
    **dict.fromkeys(
        [
            "crfrnn.save_params",
            "crfrnn.io.save_checkpoint",
            "crfrnn.io.write_labels",
            "crfrnn.data.save_label_png",
            "crfrnn.visualize.picture_grid",
            "crfrnn.visualize.save_prediction_grid",
            "crfrnn.workflow.write_report",
        ],
        _WRITE,
    ),
    **dict.fromkeys(
        [
            "crfrnn.cli.build_parser",
            *(f"crfrnn.cli.{c}.add_parser" for c in ("evaluate", "fit", "refine", "reproduce", "segment", "train")),
            "crfrnn.cli.segment.overlay_with_legend",
            "crfrnn.cli.number_type",
            "crfrnn.io.default_memory_limit",
            "crfrnn.io.format_bytes",
            "crfrnn.data.color_palette",
            "crfrnn.models.list_models",
            "crfrnn.workflow.format_table",
            "crfrnn.workflow.shard_name",
        ],
        _PURE,
    ),
    "crfrnn.cli.reproduce.run": "runs the paper's whole experiment (minutes); its one input, a YAML config, goes "
    "through the bounded reader that the train --config cases fuzz",
}
