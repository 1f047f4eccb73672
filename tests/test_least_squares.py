import pytest
import torch

from helpers import IMG
from snnet import SNNet, SNNetError, init_stitching_layers
from snnet.least_squares import NormalEquations


def pinv_solution(x: torch.Tensor, y: torch.Tensor):
    """The reference's solver: pseudo-inverse of [X 1] on all rows at once (float64 here)."""
    x1 = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)
    sol = torch.linalg.pinv(x1) @ y
    return sol[:-1].T, sol[-1]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_streaming_equals_pinv_on_well_conditioned_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 24, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 24, dtype=torch.float64)
    y = x @ torch.randn(24, 16, generator=g, dtype=torch.float64) + 0.3 * torch.randn(3000, 16, generator=g, dtype=torch.float64)
    eq = NormalEquations(24, 16, torch.device("cpu"))
    for chunk in range(0, 3000, 700):  # uneven batches
        eq.add(x[chunk:chunk + 700].float(), y[chunk:chunk + 700].float())
    w, b = eq.solve()
    w_ref, b_ref = pinv_solution(x.float().double(), y.float().double())
    assert rel_err(w, w_ref) <= 1e-4 and rel_err(b, b_ref) <= 1e-4


def test_rank_deficient_system_gives_the_minimum_norm_solution():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(500, 6, generator=g, dtype=torch.float64)
    x = torch.cat([base, base[:, :2] * 2.0, base[:, :1] - base[:, 1:2]], dim=1)  # 9 columns, rank 6
    y = base @ torch.randn(6, 4, generator=g, dtype=torch.float64)
    eq = NormalEquations(9, 4, torch.device("cpu"))
    eq.add(x, y)
    w, b = eq.solve()
    w_ref, b_ref = pinv_solution(x, y)
    assert torch.isfinite(w).all()
    assert rel_err(w, w_ref) <= 1e-6 and (b - b_ref).abs().max() <= 1e-8
    torch.testing.assert_close(x @ w.T + b, y, rtol=0, atol=1e-8)


def test_constant_inputs_do_not_break_the_solve():
    x = torch.ones(50, 5)
    y = torch.randn(50, 3)
    eq = NormalEquations(5, 3, torch.device("cpu"))
    eq.add(x, y)
    w, b = eq.solve()
    pred = x.double() @ w.T + b
    torch.testing.assert_close(pred, y.double().mean(0).expand(50, 3), rtol=0, atol=1e-6)


def _block_outputs(anchor, images):
    x = anchor._pos_embed(anchor.patch_embed(images))
    outs = []
    for blk in anchor.blocks:
        x = blk(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize("rank", [0, 4])
def test_model_layers_equal_pinv_of_stored_activations(pair_s_l, rank):
    """Every SL and LS layer against the reference's naive recipe on the same images, over batches."""
    S, L = pair_s_l
    model = SNNet([S, L], lora_rank=rank)
    torch.manual_seed(0)
    data = torch.randn(40, 3, IMG, IMG)
    batches = [(data[i:i + 16], torch.zeros(16)) for i in range(0, 40, 16)]  # last batch of 8, with targets
    assert init_stitching_layers(model, batches, progress=False) == 40
    with torch.no_grad():
        small, large = _block_outputs(S, data), _block_outputs(L, data)
    c0, c1 = model.widths
    for i, layer in enumerate(model.backbone.sl_layers):  # small block i -> large block 2i+1
        w, b = pinv_solution(small[i].reshape(-1, c0).double(), large[2 * i + 1].reshape(-1, c1).double())
        assert rel_err(layer.effective_weight().double(), w) <= 1e-4 and rel_err(layer.bias.double(), b) <= 1e-4
    for k, layer in enumerate(model.backbone.ls_layers):  # large block 2k+1 -> small block k
        w, b = pinv_solution(large[2 * k + 1].reshape(-1, c1).double(), small[k].reshape(-1, c0).double())
        assert rel_err(layer.effective_weight().double(), w) <= 1e-4 and rel_err(layer.bias.double(), b) <= 1e-4
    assert model.training  # the mode the caller had is restored


def test_image_budget_and_empty_input(pair_s_l):
    model = SNNet(list(pair_s_l))
    batches = [torch.randn(8, 3, IMG, IMG) for _ in range(5)]
    assert init_stitching_layers(model, batches, num_images=12, progress=False) == 12
    with pytest.raises(SNNetError, match="no images"):
        init_stitching_layers(model, [], progress=False)


def reference_pinv(x: torch.Tensor, y: torch.Tensor):
    """The reference's ``ps_inv``: float32 ``torch.linalg.pinv([X 1]) Y`` at pinv's default cutoff."""
    x1 = torch.ones(x.shape[0], x.shape[1] + 1)
    x1[:, :-1] = x
    sol = (torch.linalg.pinv(x1) @ y.float()).T
    return sol[..., :-1], sol[..., -1]


def test_cutoff_is_pinvs_default_on_the_reference_rows():
    """Directions of [X 1] weaker than max(rows, in + 1) x float32 eps of the strongest are dropped, as the
    reference's float32 pinv drops them; a fixed (in + 1) x eps cutoff would keep them and fit their noise."""
    g = torch.Generator().manual_seed(3)
    rows, d = 20000, 12
    q, _ = torch.linalg.qr(torch.randn(rows, d, generator=g, dtype=torch.float64))
    q = q - q.mean(0)  # columns orthogonal to the constant column of [X 1]
    s = torch.tensor([4000, 3000, 2000, 1500, 1000, 800, 600, 400, 300, 200, 0.5, 0.2], dtype=torch.float64)
    x = (q * s) @ torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    y = x @ torch.randn(d, 5, generator=g, dtype=torch.float64) + torch.randn(rows, 5, generator=g, dtype=torch.float64)
    cutoff = rows * torch.finfo(torch.float32).eps * s.max()  # 9.5: drops the 0.5 and 0.2 directions only
    assert 0.5 < cutoff < 200
    eq = NormalEquations(d, 5, torch.device("cpu"))
    for xc, yc in zip(x.float().split(3000), y.float().split(3000)):
        eq.add(xc, yc)
    assert eq.rows == rows
    w, b = eq.solve()
    w_ref, b_ref = reference_pinv(x.float(), y.float())
    assert rel_err(w.float(), w_ref) <= 1e-3 and rel_err(b.float(), b_ref) <= 1e-3
    w_fine, _ = eq.solve(rtol=(d + 1) * torch.finfo(torch.float32).eps)  # snnet's earlier cutoff
    assert rel_err(w_fine.float(), w_ref) > 0.1


def test_model_layers_equal_the_reference_pinv_on_real_activations(pair_s_l):
    """Every layer of a model fitted on 12 images (rows = 12 x 17 tokens) against the reference's float32 pinv."""
    S, L = pair_s_l
    model = SNNet([S, L], lora_rank=4)
    torch.manual_seed(5)
    data = torch.randn(12, 3, IMG, IMG)
    init_stitching_layers(model, [data[:7], data[7:]], progress=False)
    with torch.no_grad():
        small, large = _block_outputs(S, data), _block_outputs(L, data)
    c0, c1 = model.widths
    for i, layer in enumerate(model.backbone.sl_layers):
        w, b = reference_pinv(small[i].reshape(-1, c0), large[2 * i + 1].reshape(-1, c1))
        assert rel_err(layer.effective_weight(), w) <= 2e-3 and rel_err(layer.bias, b) <= 2e-3
    for k, layer in enumerate(model.backbone.ls_layers):
        w, b = reference_pinv(large[2 * k + 1].reshape(-1, c1), small[k].reshape(-1, c0))
        assert rel_err(layer.effective_weight(), w) <= 2e-3 and rel_err(layer.bias, b) <= 2e-3


def test_a_backbone_or_another_module_is_a_one_line_error(pair_s_l):
    model = SNNet(list(pair_s_l))
    for given, name in ((model.backbone, "SNNetBackbone"), (torch.nn.Linear(2, 2), "Linear")):
        with pytest.raises(SNNetError, match=f"^init_stitching_layers takes a task model \\(snnet.SNNet, a DenseModel\\), "
                                             f"whose backbone it fits, got a {name}$"):
            init_stitching_layers(given, [torch.randn(2, 3, IMG, IMG)], progress=False)
