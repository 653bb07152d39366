"""Untied iterations: per-iteration weights and compatibility in the engine, mean_field and CrfRnn."""

import pytest
import torch

from crfrnn.crf.engine import infer
from crfrnn.crf.features import position_features
from crfrnn.crf.functional import mean_field
from crfrnn.crf.module import CrfRnn
from crfrnn.crf.pairwise import Pairwise

F64 = torch.float64


def _data(seed=0, b=2, L=3, shape=(7, 8)):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, L, *shape, generator=g, dtype=F64), torch.rand(b, 3, *shape, generator=g, dtype=F64) * 255)


def _params(seed, L=3, count=3):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.rand(L, L, generator=g, dtype=F64) * 3,
            torch.rand(L, L, generator=g, dtype=F64) * 5,
            torch.rand(L, L, generator=g, dtype=F64),
        )
        for _ in range(count)
    ]


class TestUntied:
    @pytest.mark.parametrize("grad", [True, False])  # torch path, fused compiled path
    def test_identical_sets_equal_tied(self, grad):
        unary, image = _data()
        unary.requires_grad_(grad)
        crf = CrfRnn(3, num_iterations=4).double()
        untied = CrfRnn(3, num_iterations=4, num_untied=4).double()
        with torch.set_grad_enabled(grad):
            a, b = crf(unary, image), untied(unary, image)
        if grad:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

    @pytest.mark.parametrize("memory_efficient", [False, True])
    def test_module_equals_functional_and_reference(self, memory_efficient):
        """The module's output is mean_field with lists; both equal a loop of one-iteration mean fields."""
        unary, image = _data(1)
        sets = _params(2)
        crf = CrfRnn(3, num_iterations=5, num_untied=3, memory_efficient=memory_efficient).double()
        with torch.no_grad():
            for name, k in (("spatial_weights", 0), ("bilateral_weights", 1), ("compatibility", 2)):
                getattr(crf, name).copy_(torch.stack([s[k] for s in sets]))
        out = crf(unary, image)
        fn = mean_field(
            unary.clone().requires_grad_(),
            image,
            num_iterations=5,
            spatial_weight=[s[0] for s in sets],
            bilateral_weight=[s[1] for s in sets],
            compatibility=[s[2] for s in sets],
        )
        torch.testing.assert_close(out, fn, rtol=0, atol=1e-12)
        # reference: T separate one-iteration steps, each from the previous marginals (sets 0, 1, 2, 2, 2)
        from crfrnn.crf.features import bilateral_features

        n = 56
        pos = position_features((7, 8), 3.0, dtype=F64)
        bil = bilateral_features(image, 160.0, 3.0)
        u = unary.reshape(2, 3, n)
        logits = u
        for t in range(5):
            s = sets[min(t, 2)]
            ks = [Pairwise(pos, weight=s[0], compatibility=s[2]), Pairwise(bil, weight=s[1], compatibility=s[2])]
            q = torch.softmax(logits, 1)
            # one iteration from marginals q: logits = U + sum_k T_k message_k(q), via infer on log q with
            # the unary added back
            step = infer(q, ks, num_iterations=1, from_probs=True, clip=1e-300, return_logits=True)
            logits = u + (step - q.clamp_min(1e-300).log())
        torch.testing.assert_close(out.reshape(2, 3, n), logits, rtol=0, atol=1e-10)
        with torch.no_grad():  # the fused path agrees
            torch.testing.assert_close(crf.eval()(unary, image), crf.train()(unary, image), rtol=0, atol=1e-12)

    def test_eval_reuses_last_set(self):
        unary, image = _data(3)
        sets = _params(4, count=2)
        last = [sets[0], sets[1], sets[1], sets[1]]

        def kw(ss):
            return dict(
                spatial_weight=[s[0] for s in ss],
                bilateral_weight=[s[1] for s in ss],
                compatibility=[s[2] for s in ss],
            )

        a = mean_field(unary, image, num_iterations=4, **kw(sets))
        b = mean_field(unary, image, num_iterations=4, **kw(last))
        assert torch.equal(a, b)

    def test_gradcheck(self):
        unary, image = _data(5, b=1, L=2, shape=(3, 4))
        sets = [tuple(p.clone().requires_grad_() for p in s) for s in _params(6, L=2, count=2)]
        flat = [p for s in sets for p in s]

        def fn(*ps):
            return mean_field(
                unary,
                image,
                num_iterations=3,
                theta_alpha=2.0,
                theta_beta=60.0,
                theta_gamma=1.0,
                spatial_weight=[ps[0], ps[3]],
                bilateral_weight=[ps[1], ps[4]],
                compatibility=[ps[2], ps[5]],
                exact=True,
            )

        assert torch.autograd.gradcheck(fn, tuple(flat))
        crf = CrfRnn(2, num_iterations=3, num_untied=3).double()
        crf(unary, image).sum().backward()
        assert crf.spatial_weights.grad.shape == (3, 2, 2) and bool(crf.spatial_weights.grad[2].abs().sum() > 0)

    def test_untie_tie_state_dict(self):
        unary, image = _data(7)
        tied = CrfRnn(3, num_iterations=3).double()
        with torch.no_grad():
            tied.compatibility.add_(0.1 * torch.randn(3, 3, dtype=F64))
        ref = tied(unary, image)
        untied = CrfRnn(3, num_iterations=3, num_untied=3).double()
        untied.load_state_dict(tied.state_dict())  # a tied state dict loads into an untied layer
        assert untied.compatibility.shape == (3, 3, 3)
        torch.testing.assert_close(untied(unary, image), ref, rtol=0, atol=1e-12)
        tied.untie()
        assert tied.num_untied == 3
        torch.testing.assert_close(tied(unary, image), ref, rtol=0, atol=1e-12)
        with torch.no_grad():
            tied.spatial_weights[0] += 1.0
            tied.spatial_weights[2] -= 1.0
        tied.tie()  # the average: the +1 and -1 cancel
        assert tied.num_untied is None and tied.spatial_weights.shape == (3, 3)
        torch.testing.assert_close(tied(unary, image), ref, rtol=0, atol=1e-12)
        with pytest.raises(RuntimeError, match="untie"):
            CrfRnn(3).double().load_state_dict(untied.state_dict())
        assert "num_untied=3" in repr(untied)

    def test_exception(self):
        unary, image = _data(8)
        with pytest.raises(ValueError, match="num_untied must be"):
            CrfRnn(3, num_untied=0)
        with pytest.raises(ValueError, match="already untied"):
            CrfRnn(3, num_untied=2).untie()
        with pytest.raises(ValueError, match="same length"):
            mean_field(unary, image, spatial_weight=[1.0, 2.0], bilateral_weight=[1.0])
        with pytest.raises(ValueError, match="one \\(weight, compatibility\\) pair per kernel"):
            infer(
                unary.reshape(2, 3, -1),
                [Pairwise(position_features((7, 8), 3.0, dtype=F64))],
                num_iterations=1,
                iteration_weights=[[(1.0, None), (1.0, None)]],
            )
