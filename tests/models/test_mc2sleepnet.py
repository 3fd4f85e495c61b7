"""MC²SleepNet (models/mc2sleepnet.py) and its layers: sleepyco, pooling, contrastive, augment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from somnray.models import SleepBatch, create_model, list_models
from somnray.models.augment import RAW_OPERATIONS, RawAugmentation, augment_raw, augment_spectrogram
from somnray.models.layers.contrastive import info_nce_per_position
from somnray.models.layers.pooling import EpochAttentionPooling
from somnray.models.layers.sleepyco import PaddedMaxPool1d, SleePyCoBackbone
from somnray.models.mc2sleepnet import EPOCH_LEVEL_GROUPS, MC2SleepNet

#: Measured size of the full model (the paper reports 5.76 M; see the model docstring for the gap).
FULL_PARAMETERS = 6_216_404
PAPER_PARAMETERS = 5_760_000


def make_batch(batch: int = 2, length: int = 5, seed: int = 0, modality: str = "eeg") -> SleepBatch:
    generator = torch.Generator().manual_seed(seed)
    signals = {modality: torch.randn(batch, length, 3000, generator=generator)}
    present = torch.ones(batch, length, 1, dtype=torch.bool)
    labels = torch.randint(0, 5, (batch, length), generator=generator)
    return SleepBatch(signals, present, labels, (modality,))


def tiny(**overrides) -> MC2SleepNet:
    torch.manual_seed(0)
    model = create_model("mc2sleepnet_tiny", **overrides)
    assert isinstance(model, MC2SleepNet)
    return model


# -- registry, shapes, size -------------------------------------------------------------------------

def test_registered_names_and_single_modality():
    """Both variants are registered, consume one modality, and the modality can be overridden."""
    assert {"mc2sleepnet", "mc2sleepnet_tiny"} <= set(list_models("mc2*"))
    assert tiny().modalities == ("eeg",)
    assert tiny(modality="eeg2").modalities == ("eeg2",)


def test_tiny_forward_shapes_in_both_phases():
    """Logits and every documented auxiliary output have the contract's shapes in both phases."""
    batch = make_batch(3, 4)
    for phase in ("pretrain", "finetune"):
        model = tiny(phase=phase).train()
        out = model(batch.signals, batch.present)
        assert out.logits.shape == (3, 4, 5)
        for key in ("logits_raw", "logits_spec"):
            assert out.aux[key].shape == (3, 4, 5)
        for key in ("embedding_raw", "embedding_spec", "projection_raw", "projection_spec"):
            assert out.aux[key].shape == (3, 4, 16)
        assert out.aux["mask_raw"].shape == out.aux["mask_spec"].shape == (3, 4)
        norms = out.aux["projection_raw"].norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_full_model_intermediate_shapes_match_the_paper():
    """The full backbones give Z^Sg (N, 5, 128) and Z^Sp (N, 29, 128), and L = 21 runs end to end."""
    model = create_model("mc2sleepnet").eval()
    x = torch.randn(2, 3000)
    with torch.no_grad():
        assert model.raw_backbone.cnn(x.unsqueeze(1)).shape == (2, 256, 5)
        assert model.raw_backbone(x).shape == (2, 5, 128)
        spec = model.stft(x)
        assert spec.shape == (2, 29, 129)
        assert model.spec_backbone(spec).shape == (2, 29, 128)
        batch = make_batch(1, 21)
        assert model(batch.signals, batch.present).logits.shape == (1, 21, 5)


def test_full_parameter_count_is_pinned():
    """The full model has 6,216,404 parameters, within 8 % of the paper's 5.76 M.

    Components as docs/models.md §3.2 estimates them: CNN ≈1.5 M, spectrogram Transformer ≈1.3 M, two
    SA+CA blocks ≈3.2 M. Those three alone sum to 6.05 M > 5.76 M, so the gap is not in the parts
    the paper leaves open (EW, projection, heads, mask tokens: 0.17 M).
    """
    model = create_model("mc2sleepnet")
    sizes = {g: sum(dict(model.named_parameters())[n].numel() for n in names)
             for g, names in model.parameter_groups().items()}
    assert model.num_parameters() == FULL_PARAMETERS
    assert sizes["raw_backbone"] == 1_543_621
    assert sizes["spec_backbone"] == 1_336_064
    assert sizes["sequence"] == 3_169_280
    assert sizes["epoch_attention"] + sizes["projection"] + sizes["heads"] + sizes["mask_tokens"] == 167_439
    assert abs(FULL_PARAMETERS / PAPER_PARAMETERS - 1) < 0.08


def test_tiny_parameter_count_is_small():
    """The tiny variant stays in the few-thousand to few-hundred-thousand range."""
    assert 5_000 < tiny().num_parameters() < 300_000


def test_parameter_groups_partition_the_model():
    """Every parameter is in exactly one base group, and epoch_level is the union of the four."""
    model = tiny()
    groups = model.parameter_groups()
    base = ["raw_backbone", "spec_backbone", "epoch_attention", "projection", "sequence", "heads",
            "mask_tokens"]
    names = [n for g in base for n in groups[g]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names))
    assert set(groups["epoch_level"]) == {n for g in EPOCH_LEVEL_GROUPS for n in groups[g]}


# -- layers ---------------------------------------------------------------------------------------

def test_padded_max_pool_follows_sleepyco_lengths():
    """Pooling by 5 with padding gives 3000 → 600 → 120 → 24 → 5 (24 padded to 25)."""
    pool = PaddedMaxPool1d(5)
    lengths = [3000]
    x = torch.randn(1, 1, 3000)
    for _ in range(4):
        x = pool(x)
        lengths.append(x.shape[-1])
    assert lengths == [3000, 600, 120, 24, 5]
    assert SleePyCoBackbone().output_length(3000) == 5


def test_epoch_attention_pooling_matches_equations():
    """EW + GAP equals (1/T) Σ softmax(tanh(W z + b)ᵀ a_e) z (Eq. 9–12), and 'sum' drops the 1/T."""
    torch.manual_seed(0)
    pool = EpochAttentionPooling(8)
    z = torch.randn(3, 5, 8)
    alpha = torch.softmax(torch.tanh(z @ pool.proj.weight.T + pool.proj.bias) @ pool.context, dim=1)
    expected_sum = (alpha.unsqueeze(-1) * z).sum(1)
    torch.testing.assert_close(pool(z), expected_sum / 5)
    pool.reduce = "sum"
    torch.testing.assert_close(pool(z), expected_sum)


def _info_nce_numpy(za: np.ndarray, zb: np.ndarray, tau: float, form: str) -> float:
    """Eq. 14–16 written out with loops."""
    batch, length, _ = za.shape

    def one_way(a, b):
        per_sequence = []
        for i in range(batch):
            ratios = []
            for j in range(length):
                num = np.exp(a[i, j] @ b[i, j] / tau)
                den = sum(np.exp(a[i, j] @ b[k, j] / tau) for k in range(batch))
                ratios.append(num / den)
            if form == "paper":
                per_sequence.append(-np.log(np.mean(ratios)))
            else:
                per_sequence.append(np.mean([-np.log(r) for r in ratios]))
        return float(np.mean(per_sequence))

    return (one_way(za, zb) + one_way(zb, za)) / 2


@pytest.mark.parametrize("batch", [2, 3])
@pytest.mark.parametrize("form", ["paper", "conventional"])
def test_info_nce_matches_hand_computation(batch, form):
    """Both InfoNCE forms equal the loop-by-loop numpy computation of Eq. 14–16 (L = 2)."""
    rng = np.random.default_rng(batch)
    za = rng.normal(size=(batch, 2, 4))
    zb = rng.normal(size=(batch, 2, 4))
    za /= np.linalg.norm(za, axis=-1, keepdims=True)
    zb /= np.linalg.norm(zb, axis=-1, keepdims=True)
    expected = _info_nce_numpy(za, zb, 0.5, form)
    got = info_nce_per_position(torch.tensor(za), torch.tensor(zb), 0.5, form=form)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_forms_differ_and_paper_is_not_larger():
    """The paper's log-after-mean form differs from the conventional one and is ≤ it (Jensen)."""
    torch.manual_seed(1)
    za, zb = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    paper = info_nce_per_position(za, zb, 0.1, form="paper")
    conventional = info_nce_per_position(za, zb, 0.1, form="conventional")
    assert paper.item() < conventional.item()


def test_info_nce_invalid_epochs_are_neither_anchors_nor_negatives():
    """Masking a whole sequence out equals dropping it; all-invalid gives a finite zero gradient."""
    torch.manual_seed(2)
    za = torch.randn(3, 2, 4, requires_grad=True)
    zb = torch.randn(3, 2, 4)
    valid = torch.tensor([[True, True], [False, False], [True, True]])
    for form in ("paper", "conventional"):
        masked = info_nce_per_position(za, zb, 0.2, valid=valid, form=form)
        dropped = info_nce_per_position(za[[0, 2]], zb[[0, 2]], 0.2, form=form)
        torch.testing.assert_close(masked, dropped)
    loss = info_nce_per_position(za, zb, 0.2, valid=torch.zeros(3, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(za.grad).all()


# -- masking and phases ---------------------------------------------------------------------------

def test_masking_ratio_and_at_least_one_visible_position():
    """Masks hit ~mask_ratio of positions and never hide a whole sequence, even at ratio 0.9."""
    model = tiny()
    model.generator = torch.Generator().manual_seed(0)
    raw, spec = model.sample_masks(400, 21, torch.device("cpu"))
    assert abs(raw.float().mean().item() - 0.5) < 0.02 and abs(spec.float().mean().item() - 0.5) < 0.02
    assert not torch.equal(raw, spec)
    heavy = tiny(mask_ratio=0.9)
    heavy.generator = torch.Generator().manual_seed(0)
    raw, spec = heavy.sample_masks(2000, 2, torch.device("cpu"))
    assert (~raw).any(dim=1).all() and (~spec).any(dim=1).all()


def test_masking_only_in_pretrain_training_mode():
    """Masking happens in pretrain + train mode only; eval and finetune see the whole sequence."""
    batch = make_batch(4, 6)
    model = tiny()
    model.generator = torch.Generator().manual_seed(3)
    out = model.train()(batch.signals, batch.present)
    assert out.aux["mask_raw"].any() and out.aux["mask_spec"].any()
    with torch.no_grad():
        out = model.eval()(batch.signals, batch.present)
    assert not out.aux["mask_raw"].any() and not out.aux["mask_spec"].any()
    model.set_phase("finetune")
    out = model.train()(batch.signals, batch.present)
    assert not out.aux["mask_raw"].any() and not out.aux["mask_spec"].any()


def test_masked_positions_use_the_mask_token_and_context_stays_unmasked():
    """The stream input is mask token + PE at masked positions and O + PE elsewhere, while the
    cross-attention context is the other view's unmasked O + PE."""
    model = tiny()
    model.generator = torch.Generator().manual_seed(5)
    captured = {}

    def grab(name):
        def hook(_module, args, kwargs):
            captured[name] = (args[0].detach(), kwargs["context"].detach())
        return hook

    model.raw_sequence.register_forward_pre_hook(grab("raw"), with_kwargs=True)
    model.spec_sequence.register_forward_pre_hook(grab("spec"), with_kwargs=True)
    batch = make_batch(3, 6)
    out = model.train()(batch.signals, batch.present)
    pe = model.sequence_pos.pe[:6]
    for view, other in (("raw", "spec"), ("spec", "raw")):
        mask = out.aux[f"mask_{view}"]
        assert mask.any() and (~mask).any()
        token = getattr(model, f"mask_token_{view}").detach()
        stream, context = captured[view]
        embedding = out.aux[f"embedding_{view}"].detach()
        expected = torch.where(mask[..., None], token, embedding) + pe
        torch.testing.assert_close(stream, expected)
        torch.testing.assert_close(context, out.aux[f"embedding_{other}"].detach() + pe)


def test_phase_switch_and_loss_weights():
    """Phases select Eq. 19/23's weights; overrides per phase and per call are honoured."""
    model = tiny()
    assert model.default_loss_weights == {"contrastive": 1.0, "raw": 1.0, "spec": 0.1, "concat": 0.1}
    model.set_phase("finetune")
    assert model.default_loss_weights == {"contrastive": 0.0, "raw": 1.0, "spec": 1.0, "concat": 1.0}
    with pytest.raises(ValueError, match="phase must be one of"):
        model.set_phase("warmup")
    custom = tiny(loss_weights={"pretrain": {"spec": 0.5}})
    assert custom.default_loss_weights["spec"] == 0.5
    with pytest.raises(ValueError, match="unknown loss weight"):
        tiny(loss_weights={"pretrain": {"recon": 1.0}})
    with pytest.raises(ValueError, match="unknown phase"):
        tiny(loss_weights={"stage3": {"raw": 1.0}})


def test_loss_terms_per_phase_and_total():
    """Pretrain reports InfoNCE and weights it in; finetune drops it; total is the weighted sum."""
    batch = make_batch(3, 4)
    model = tiny()
    model.generator = torch.Generator().manual_seed(0)
    terms = model.loss(model.train()(batch.signals, batch.present), batch)
    assert set(terms) == {"raw", "spec", "concat", "contrastive", "total"}
    expected = terms["contrastive"] + terms["raw"] + 0.1 * terms["spec"] + 0.1 * terms["concat"]
    torch.testing.assert_close(terms["total"], expected)
    # Eq. 18 sums the CE over the L positions: ≈ L·log 5 for an untrained model.
    assert 0.5 * 4 * np.log(5) < terms["raw"].item() < 2 * 4 * np.log(5)
    model.set_phase("finetune")
    terms = model.loss(model(batch.signals, batch.present), batch, weights={"spec": 2.0})
    assert set(terms) == {"raw", "spec", "concat", "total"}
    torch.testing.assert_close(terms["total"], terms["raw"] + 2.0 * terms["spec"] + terms["concat"])


def test_freeze_epoch_level_keeps_parameters_and_batchnorm_buffers_bit_identical():
    """After freeze(['epoch_level']) and finetune steps, the epoch level (params + BN buffers) is
    bit-identical while the sequence level and heads have changed."""
    model = tiny()
    model.set_phase("finetune")
    frozen = model.freeze(["epoch_level"])
    model.train()
    assert frozen == sorted(model.parameter_groups()["epoch_level"])
    assert not model.raw_backbone.training and not model.spec_backbone.training
    assert model.raw_sequence.training and model.concat_head.training
    epoch_prefixes = ("raw_backbone.", "spec_backbone.", "raw_attention.", "spec_attention.",
                      "raw_projection.", "spec_projection.")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert any("running_mean" in k for k in before if k.startswith(epoch_prefixes))
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = make_batch(2, 4)
    for _ in range(3):
        loss = model.loss(model(batch.signals, batch.present), batch)["total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(epoch_prefixes):
            assert torch.equal(value, after[key]), key
    for key in ("raw_sequence.layers.0.self_attn.q_proj.weight", "concat_head.net.0.weight",
                "spec_head.net.3.bias"):
        assert not torch.equal(before[key], after[key]), key


def test_frozen_batchnorm_stays_in_eval_when_only_it_is_frozen():
    """A BatchNorm whose parameters are frozen stays in eval mode even inside a trainable component."""
    model = tiny()
    bn = model.raw_backbone.cnn.blocks[0][1]
    bn.weight.requires_grad_(False)
    bn.bias.requires_grad_(False)
    model.train()
    assert not bn.training and model.raw_backbone.training


# -- augmentations --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_augmentations_keep_shape_dtype_and_are_seeded(dtype):
    """Raw and spectrogram augmentations keep shape and dtype and repeat under the same seed."""
    x = torch.randn(4, 6, 3000).to(dtype)
    a = augment_raw(x, torch.Generator().manual_seed(7))
    b = augment_raw(x, torch.Generator().manual_seed(7))
    c = augment_raw(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    spec = torch.randn(5, 29, 129).to(dtype)
    s1 = augment_spectrogram(spec, torch.Generator().manual_seed(1))
    s2 = augment_spectrogram(spec, torch.Generator().manual_seed(1))
    assert s1.shape == spec.shape and s1.dtype == dtype and torch.equal(s1, s2)
    assert 0.05 < (s1.float() - spec.float()).std().item() < 0.15


def test_each_raw_operation_does_what_it_says():
    """Scale, DC shift, time shift, zero-mask and band-stop behave as specified (p_apply = 1)."""
    t = torch.arange(3000) / 100.0
    x = torch.stack([torch.sin(2 * np.pi * 5 * t), torch.sin(2 * np.pi * 11 * t)])  # 5 Hz, 11 Hz
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    only = lambda op, **kw: RawAugmentation(p_apply=1.0, operations=(op,), **kw)  # noqa: E731

    scaled = augment_raw(x, gen(), only("scale"))
    ratio = scaled[:, 100] / x[:, 100]
    assert ((ratio >= 0.5) & (ratio <= 2.0)).all()
    torch.testing.assert_close(scaled, x * ratio[:, None])

    shifted = augment_raw(x, gen(), only("dc_shift"))
    offset = (shifted - x).mean(dim=1)
    assert (offset.abs() <= 0.5).all()
    torch.testing.assert_close(shifted, x + offset[:, None])

    moved = augment_raw(x, gen(), only("time_shift", time_shift_s=1.0))
    for row in range(2):
        shifts = [s for s in range(-100, 101) if torch.allclose(
            moved[row], torch.nn.functional.pad(x[row], (max(s, 0), max(-s, 0)))[max(-s, 0):][:3000])]
        assert shifts, "time shift is not a zero-filled integer shift of at most 1 s"

    zeroed = augment_raw(x + 10.0, gen(), only("zero_mask"))
    n_zero = (zeroed == 0).sum(dim=1)
    assert (n_zero <= 300).all()

    stopped = augment_raw(x, gen(), only("band_stop", band_stop_low_hz=(10.0, 10.0)))
    assert stopped[0].sub(x[0]).abs().max() < 1e-3  # 5 Hz passes
    assert stopped[1].abs().max() < 1e-3  # 11 Hz (inside 10–12 Hz) is removed


def test_augmentation_probability_zero_is_identity():
    """With p_apply = 0 no epoch is changed; with p_apply = 0.5 roughly half are."""
    x = torch.randn(400, 3000)
    assert torch.equal(augment_raw(x, torch.Generator().manual_seed(0), RawAugmentation(p_apply=0.0)), x)
    changed = (augment_raw(x, torch.Generator().manual_seed(0)) != x).any(dim=1).float().mean()
    assert 0.4 < changed.item() < 0.6
    with pytest.raises(ValueError, match="operations"):
        RawAugmentation(operations=("flip",))
    assert set(RAW_OPERATIONS) == {"scale", "dc_shift", "noise", "band_stop", "time_shift", "zero_mask"}


def test_model_augments_only_in_pretrain_training():
    """Seeded pretrain training passes repeat exactly; eval and finetune outputs are augmentation-free."""
    batch = make_batch(2, 3)
    model = tiny(dropout=0.0, head_dropout=0.0)
    outputs = []
    for _ in range(2):
        model.generator = torch.Generator().manual_seed(11)
        outputs.append(model.train()(batch.signals, batch.present).aux["projection_raw"])
    torch.testing.assert_close(outputs[0], outputs[1])
    model.eval()
    with torch.no_grad():
        clean = model(batch.signals, batch.present).aux["projection_raw"]
        model.set_phase("finetune")
        assert not model.train().augmentation_active
        model.eval()
        assert torch.equal(model(batch.signals, batch.present).aux["projection_raw"], clean)


def test_clean_sequence_path_option_runs():
    """augment_sequence_path=False runs the backbones twice and keeps all shapes."""
    batch = make_batch(2, 3)
    out = tiny(augment_sequence_path=False).train()(batch.signals, batch.present)
    assert out.logits.shape == (2, 3, 5) and out.aux["projection_raw"].shape == (2, 3, 16)


# -- training behaviour ----------------------------------------------------------------------------

def test_pretrain_forward_backward_is_finite_and_reaches_every_parameter():
    """In pretrain (masking + augmentation + InfoNCE) the loss is finite and every parameter,
    including both mask tokens, gets a finite, non-zero gradient."""
    model = tiny()
    model.generator = torch.Generator().manual_seed(0)
    batch = make_batch(3, 5)
    out = model.train()(batch.signals, batch.present)
    assert out.aux["mask_raw"].any() and out.aux["mask_spec"].any()
    terms = model.loss(out, batch)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_overfits_one_batch_in_finetune():
    """mc2sleepnet_tiny reaches 100 % accuracy on one batch (B=2, L=6) within 200 steps."""
    model = tiny(phase="finetune")
    batch = make_batch(2, 6, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    accuracy = 0.0
    for step in range(200):
        model.train()
        loss = model.loss(model(batch.signals, batch.present), batch)["total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                prediction = model(batch.signals, batch.present).logits.argmax(-1)
            accuracy = (prediction == batch.labels).float().mean().item()
            if accuracy == 1.0:
                break
    assert accuracy == 1.0


# -- missing modality and spectrogram statistics ----------------------------------------------------

def test_absent_modality_raises_and_absent_epochs_do_not_count():
    """No signal for the modality is a ValueError; labels of absent epochs do not change the loss."""
    model = tiny().eval()
    batch = make_batch(2, 4)
    with pytest.raises(ValueError, match="no 'eeg' signal"):
        model({}, batch.present)
    present = batch.present.clone()
    present[0, 1:3, 0] = False
    batch = SleepBatch(batch.signals, present, batch.labels, batch.modalities)
    with torch.no_grad():
        out = model(batch.signals, batch.present)
        base = model.loss(out, batch)
        relabelled = batch.labels.clone()
        relabelled[0, 1:3] = (relabelled[0, 1:3] + 1) % 5
        other = model.loss(out, SleepBatch(batch.signals, present, relabelled, batch.modalities))
    for key in base:
        torch.testing.assert_close(base[key], other[key])
    nothing = SleepBatch(batch.signals, torch.zeros_like(present), batch.labels, batch.modalities)
    assert model.loss(out, nothing)["total"].item() == 0.0


def test_spectrogram_statistics_round_trip():
    """Statistics computed from present epochs normalise the spectrogram per bin; bad input raises."""
    model = tiny()
    epochs = torch.randn(4, 10, 3000) * 3.0
    present = torch.ones(4, 10, 1, dtype=torch.bool)
    present[0, :5] = False
    epochs[0, :5] = 0.0  # absent epochs are flat; they must not enter the statistics
    stats = model.spectrogram_statistics({"eeg": epochs}, present)
    mean, std = stats["eeg"]
    assert set(stats) == {"eeg"} and mean.shape == std.shape == (129,)
    model.set_spectrogram_statistics("eeg", mean, std)
    spec = model.stft(epochs[present[..., 0]]).reshape(-1, 129)
    assert spec.mean(0).abs().max() < 1e-3 and (spec.std(0) - 1).abs().max() < 1e-2
    with pytest.raises(ValueError, match="only"):
        model.set_spectrogram_statistics("eog", mean, std)
    with pytest.raises(ValueError, match="does not use"):
        model.spectrogram_statistics({"eeg": epochs, "eog": epochs})
    with pytest.raises(ValueError, match="no 'eeg' epochs"):
        model.spectrogram_statistics({})


def test_fit_training_statistics_matches_the_old_trainer_numbers():
    """fit_training_statistics sets the stft buffers the trainer used to set (spectrogram_statistics,
    shipped as lists, set_spectrogram_statistics) and a twin loads them bit-identically."""
    epochs = {"eeg": torch.randn(30, 3000) * 3.0}
    old, new, twin = tiny(), tiny(), tiny()
    for m, (mean, std) in old.spectrogram_statistics(epochs).items():
        old.set_spectrogram_statistics(m, torch.as_tensor(np.asarray(mean.numpy().tolist())),
                                       torch.as_tensor(np.asarray(std.numpy().tolist())))
    fitted = new.fit_training_statistics(torch.tensor([3, 1, 4, 1, 5]), epochs)
    assert sorted(fitted) == ["stft.bin_mean", "stft.bin_std"]
    twin.load_training_statistics(fitted)
    for model in (new, twin):
        assert torch.equal(model.stft.bin_mean, old.stft.bin_mean)
        assert torch.equal(model.stft.bin_std, old.stft.bin_std)
    assert tiny().fit_training_statistics(torch.tensor([1, 1, 1, 1, 1]), {}) == {}


def test_declared_phases_policy_and_statistics_need():
    """MC2SleepNet declares stage 0 and its two phases, needs its one modality, and samples training epochs."""
    model = tiny()
    assert model.phases == ("backbone", "pretrain", "finetune") == type(model).phases
    assert model.missing_policy == "require" and model.needs_epoch_sample
    for phase in model.phases:
        assert create_model("mc2sleepnet_tiny", phase=phase).phase == phase


def test_pooling_is_equation_11_by_default():
    """MC2SleepNet pools with Eq. 11's sum by default; pooling_reduce='mean' keeps the division by T."""
    assert tiny().raw_attention.reduce == tiny().spec_attention.reduce == "sum"
    assert tiny(pooling_reduce="mean").raw_attention.reduce == "mean"
    torch.manual_seed(0)
    model = create_model("mc2sleepnet").eval()
    z = model.spec_backbone(model.stft(torch.randn(8, 3000)))  # (N, 29, D) spectrogram tokens
    summed, mean = model.spec_attention(z), EpochAttentionPooling(128)(z)
    # The summed view has the scale of the positional encoding (rms ≈ 0.707) added after it.
    assert summed.pow(2).mean().sqrt() > 0.5 > 0.1 > mean.pow(2).mean().sqrt()


def test_eq18_reading_is_an_option():
    """ce_reduction='mean' is Eq. 18 divided by L: the sequence sum is L times the mean on the same outputs."""
    batch = make_batch(3, 4)
    model = tiny(phase="finetune").eval()
    out = model(batch.signals, batch.present)
    summed = model.loss(out, batch)["raw"]
    model.ce_reduction = "mean"
    torch.testing.assert_close(summed, 4 * model.loss(out, batch)["raw"])


def test_backbone_phase_classifies_single_epochs():
    """Stage 0 trains the backbones, attention and view heads on single epochs: the sequence level gets no gradient."""
    batch = make_batch(3, 4)
    model = tiny(phase="backbone").train()
    assert model.default_loss_weights == {"contrastive": 0.0, "raw": 1.0, "spec": 1.0, "concat": 0.0}
    out = model(batch.signals, batch.present)
    torch.testing.assert_close(out.logits, out.aux["logits_raw"] + out.aux["logits_spec"])
    terms = model.loss(out, batch)
    assert 0.5 * np.log(5) < terms["raw"].item() < 2 * np.log(5)  # a mean over epochs, not a sum over L
    terms["total"].backward()
    groups = model.parameter_groups()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert set(groups["raw_backbone"]) | set(groups["spec_backbone"]) <= trained
    assert not trained & set(groups["sequence"] + groups["mask_tokens"] + groups["projection"])
    # Single epochs: an epoch's prediction does not depend on its neighbours.
    model.eval()
    alone = model({"eeg": batch.signals["eeg"][:, :1]}, batch.present[:, :1]).logits
    torch.testing.assert_close(alone, model(batch.signals, batch.present).logits[:, :1])


@pytest.mark.parametrize("name, view, other", [("mc2sleepnet_cnn_only", "raw", "spec_backbone"),
                                               ("mc2sleepnet_tf_only", "spec", "raw_backbone")])
def test_single_epoch_baselines_are_registered(name, view, other):
    """Table 3's "CNN only" / "TF only" rows train and predict from one view's backbone only."""
    batch = make_batch(2, 3)
    model = create_model(name, raw_widths=(8, 8, 16, 16, 32), se_reduction=4, d_model=16, n_heads=2, d_ff=32,
                         proj_dim=16, head_hidden=16).train()
    assert model.phase == "backbone" and model.epoch_views == view
    out = model(batch.signals, batch.present)
    torch.testing.assert_close(out.logits, out.aux[f"logits_{view}"])
    model.loss(out, batch)["total"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n in model.parameter_groups()[other])
    with pytest.raises(ValueError, match=r"epoch_views must be one of \['both', 'raw', 'spec'\], got 'eog'"):
        create_model(name, epoch_views="eog")
