"""Fuzzing the helpers around the CRF (see :mod:`fuzz_registry`): pydensecrf's compat layer, memory estimates,
label maps, parameter files, pictures, shards and losses, with random shapes, dtypes, values and bytes. Each call
returns finite output of the right shape or raises ValueError/TypeError/MemoryError (files: also OSError) with a
message; never another exception, NaN or a crash. Tiny inputs and few examples keep the CI budget."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from fuzz_settings import fuzz
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz_public import FILE_ALLOWED, attempt, finite, number, small, tensor

import crfrnn
import crfrnn.compat as dcrf
from crfrnn import data as cdata
from crfrnn import fit, io, metrics, models, params, visualize, workflow

labels_map = st.builds(
    lambda seed, h, w, hi, dtype: np.random.default_rng(seed).integers(-1, hi, (h, w)).astype(dtype),
    st.integers(0, 2**16),
    small,
    small,
    st.sampled_from([2, 5, 256, 300]),
    st.sampled_from(["int64", "int32", "uint8", "float32"]),
)


@fuzz(15)
@given(st.data(), st.integers(-1, 4), st.integers(-1, 6), number, st.one_of(st.integers(-2, 3), st.floats(-1, 3)))
def test_compat_densecrf(data, labels, n, compat, niter):
    d = attempt(lambda: dcrf.DenseCRF(n, labels))
    if d is None:
        return
    unary = data.draw(tensor((max(labels, 0), max(n, 0)), "float32")).numpy()
    if attempt(lambda: d.setUnaryEnergy(unary)) is None and not np.isfinite(unary).all():
        pass
    feats = data.draw(tensor((data.draw(st.integers(1, 3)), max(n, 0)), "float32")).numpy()
    attempt(lambda: d.addPairwiseEnergy(feats, compat=compat))
    q = attempt(lambda: d.inference(niter))
    if q is not None:
        q = np.asarray(q)
        assert q.shape == (labels, n) and finite(q)
        kl = attempt(lambda: d.klDivergence(q))
        assert kl is None or np.isfinite(kl)
        m = attempt(lambda: d.map(niter))
        assert m is None or np.asarray(m).shape == (n,)
    state = attempt(d.startInference)
    if state is not None:
        attempt(lambda: d.stepInference(state[0], state[1], state[2]))


@fuzz(15)
@given(labels_map, st.integers(-1, 6), number, st.lists(st.integers(-1, 6), min_size=0, max_size=3))
def test_compat_unaries(labels, classes, gt_prob, shape):
    out = attempt(lambda: dcrf.compute_unary(labels, classes, gt_prob))
    assert out is None or finite(out)
    sm = np.random.default_rng(0).dirichlet(np.ones(max(classes, 1)), labels.shape).astype(np.float32)
    out = attempt(lambda: dcrf.softmax_to_unary(np.moveaxis(sm, -1, 0), gt_prob))
    assert out is None or finite(out)
    out = attempt(lambda: dcrf.create_pairwise_gaussian((gt_prob, gt_prob), tuple(shape)))
    assert out is None or finite(out)


@fuzz(15)
@given(st.data(), st.lists(st.integers(-1, 6), min_size=0, max_size=4), st.integers(-2, 6))
def test_memory_and_labels(data, shape, classes):
    scores = data.draw(tensor(tuple(max(s, 0) for s in shape)))
    out = attempt(lambda: io.labels_of(scores.numpy(), data.draw(st.booleans())))
    assert out is None or out.shape == tuple(scores.shape[1:])
    h, w = data.draw(st.integers(-1, 10**5)), data.draw(st.integers(-1, 10**5))
    ranges = data.draw(st.lists(number, min_size=0, max_size=4))
    spans = attempt(lambda: io.kernel_spans((h, w), ranges, data.draw(number), data.draw(number), data.draw(number)))
    assert spans is None or all(np.isfinite(s).all() for s in spans)
    out = attempt(lambda: io.lattice_vertices(h * w, data.draw(st.lists(number, min_size=0, max_size=5))))
    assert out is None or (isinstance(out, int) and out >= 0)
    out = attempt(lambda: io.estimate_memory(h, w, classes, kernels=spans))
    assert out is None or (isinstance(out, int) and out >= 0)
    limit = data.draw(st.one_of(st.none(), st.integers(-1, 2**40)))
    attempt(
        lambda: io.check_memory("x.npy", (h, w), classes, limit, kernels=spans), (*FILE_ALLOWED, io.MemoryLimitError)
    )


@fuzz(15)
@given(st.data(), small, small, st.integers(-1, 5), st.integers(-3, 300))
def test_metric_classes(data, h, w, classes, ignore):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    pred = torch.from_numpy(rng.integers(-2, 8, (h, w)))
    target = torch.from_numpy(rng.choice([-1, 0, 1, 2, 3, 255, 7], (h, w)))
    for build in (
        lambda: metrics.ConfusionMatrix(classes, ignore_index=ignore),
        lambda: metrics.BoundaryAccuracy(classes, widths=(1, data.draw(st.integers(-2, 9))), ignore_index=ignore),
    ):
        meter = attempt(build)
        if meter is not None:
            attempt(lambda: meter.update(pred, target))
            attempt(meter.compute)  # metrics of absent classes may be NaN (documented)


@fuzz(15)
@given(st.data(), small, small, st.sampled_from(["none", "shrink", "fit", "bogus"]), st.integers(-1, 12))
def test_resize_and_segment(data, h, w, policy, max_size):
    image = data.draw(st.sampled_from([np.uint8, np.float32, np.int64]))
    arr = (np.random.default_rng(h * w).random((h, w, data.draw(st.sampled_from([3, 1, 4])))) * 255).astype(image)
    out = attempt(lambda: models.resize_for_network(arr, policy, max_size))
    assert out is None or out.ndim == 3
    model = models.CrfRnnSegmenter(models.SmallFCN(2, width=2), crfrnn.CrfRnn(2, num_iterations=1)).eval()
    out = attempt(lambda: models.segment_images(model, [arr], resize=policy if policy != "fit" else "none"))
    assert out is None or out[0].labels.shape == (h, w)


@fuzz(15)
@given(st.dictionaries(st.sampled_from(list(params.PARAM_NAMES) + ["iterations", "bogus"]), number, max_size=4))
def test_params(values):
    out = attempt(lambda: params.check_params(values))
    assert out is None or all(np.isfinite(v) for v in out.values() if isinstance(v, float))
    mf = attempt(lambda: fit.to_mean_field(values))
    assert mf is None or isinstance(mf, dict)


@fuzz(15)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)), st.sampled_from(["yaml", "json", "png"]))
def test_param_and_label_files(content, suffix):
    path = Path(tempfile.mkdtemp()) / f"p.{suffix}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = attempt(lambda: crfrnn.load_params(path), FILE_ALLOWED)
    assert out is None or isinstance(out, dict)
    out = attempt(lambda: cdata.load_label_png(path), FILE_ALLOWED)
    assert out is None or out.ndim == 2


@fuzz(15)
@given(labels_map, number, st.integers(-2, 9), st.booleans())
def test_pictures(labels, alpha, gap, legend):
    h, w = labels.shape
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3)).astype(np.uint8)
    for call in (
        lambda: visualize.colorize_labels(labels),
        lambda: cdata.colorize(labels),
        lambda: visualize.label_overlay(image, labels, alpha),
        lambda: visualize.make_overlay(image, labels, labels, alpha=alpha, gap=gap, legend=legend),
    ):
        out = attempt(call)
        assert out is None or (out.dtype == np.uint8 and out.shape[-1] == 3)


@fuzz(15)
@given(st.text(max_size=12), st.integers(-2, 6), st.integers(-2, 6), st.integers(0, 5))
def test_shards(text, index, count, items):
    out = attempt(lambda: workflow.parse_shard(text))
    assert out is None or (0 <= out[0] < out[1])
    out = attempt(lambda: workflow.take_shard([str(i) for i in range(items)], index, count))
    assert out is None or len(out) <= items


@fuzz(15)
@given(st.data(), small, small, st.integers(1, 4), st.integers(-3, 300))
def test_losses_and_scribbles(data, h, w, classes, ignore):
    logits = data.draw(tensor((1, classes, h, w), data.draw(st.sampled_from(["float32", "float64", "float16"]))))
    target = torch.from_numpy(np.random.default_rng(h).choice([-1, 0, 1, 3, 255], (1, h, w)))
    out = attempt(lambda: workflow.segmentation_loss(logits, target, ignore))
    assert out is None or finite(out) or not finite(logits) or bool((target == ignore).all())
    mask = target[0].numpy()
    out = attempt(
        lambda: cdata.scribbles_from_mask(
            mask,
            fraction=data.draw(number),
            width=data.draw(st.integers(-1, 3)),
            margin=data.draw(st.integers(-1, 3)),
            max_strokes=data.draw(st.integers(-1, 3)),
            min_area=data.draw(st.integers(-1, 20)),
            ignore_index=ignore,
        )
    )
    assert out is None or np.asarray(out).shape == (h, w)
    out = attempt(lambda: fit.degraded_probs(mask, classes, factor=data.draw(st.integers(-1, 9))))
    assert out is None or finite(out)
