"""Each defence of privsplit.defenses.zoo on a tiny seeded model: its paper's trend, monotone over >= 3 knob values."""
from __future__ import annotations

import pytest
import torch
from conftest import make_faces

from privsplit.defenses.calibrate import calibrate_sigma, validation_identities
from privsplit.defenses.objectives import FinetuneConfig, distance_correlation
from privsplit.defenses.zoo import DEFENCES, InputBlur, InputPixelate, build_defence
from privsplit.models import vgg16

LAYER = "conv5_3"


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    return vgg16(width=0.0625, input_size=32).eval(), make_faces(n=96, n_ids=8, seed=1)


def _features(emb, faces, noisy: bool = True) -> torch.Tensor:
    with torch.no_grad():
        torch.manual_seed(0)
        return emb.client_features(faces.inputs(), noisy=noisy).flatten(1)


def _nn_identity(emb, faces) -> float:
    """1-NN identity accuracy: clean features of even rows enrolled, received features of odd rows queried."""
    clean, recv = _features(emb, faces, noisy=False), _features(emb, faces)
    ids = faces.labels["identity"]
    enrol = (torch.arange(len(ids)) // 8) % 2 == 0  # every identity on both sides
    pred = ids[enrol][torch.cdist(recv[~enrol], clean[enrol]).argmin(1)]
    return float((pred == ids[~enrol]).float().mean())


def _decreasing(values: list[float], slack: float = 0.0) -> bool:
    return all(b <= a + slack for a, b in zip(values, values[1:])) and values[-1] < values[0]


def test_registry_lists_every_defence() -> None:
    assert set(DEFENCES.names()) >= {"nopeek", "adversarial", "siamese-adversarial", "gaussian-split", "learned-noise",
                                     "blur", "pixelate", "send-image", "calibrated-noise"}
    assert all(len(DEFENCES.get(n).knobs) >= 3 for n in DEFENCES.names() if n != "send-image")
    with pytest.raises(ValueError, match="choose one of"):
        DEFENCES.get("nopeak")


def test_nopeek_distance_correlation_falls_with_weight(setup) -> None:
    model, faces = setup
    cfg = FinetuneConfig(epochs=4, lr=1e-3)
    dcors = []
    for w in (0.0, 0.5, 2.0):
        emb = build_defence("nopeek", model, layer=LAYER, train=faces, column="gender", knob=w, config=cfg)
        dcors.append(float(distance_correlation(faces.inputs(), _features(emb, faces))))
    assert _decreasing(dcors), dcors


def test_gaussian_split_identity_falls_with_sigma(setup) -> None:
    model, faces = setup
    # conv3_3: the tiny untrained model's deep features carry little of the synthetic identity
    accs = [_nn_identity(build_defence("gaussian-split", model, layer="conv3_3", train=faces, column="gender", knob=s),
                         faces) for s in (0.5, 8.0, 32.0)]
    assert _decreasing(accs), accs


def test_learned_noise_scale_grows_with_weight(setup) -> None:
    model, faces = setup
    scales = []
    for w in (0.01, 0.1, 1.0):
        emb = build_defence("learned-noise", model, layer=LAYER, train=faces, column="gender", knob=w,
                            config=FinetuneConfig(epochs=3))
        scales.append(float(emb.noise.std.mean()))
    assert scales[0] < scales[1] < scales[2], scales


def test_blur_and_pixelate_remove_identity_from_the_input() -> None:
    faces = make_faces(n=96, n_ids=8, seed=1)
    x, ids = faces.inputs(), faces.labels["identity"]

    def nn_acc(t: torch.nn.Module) -> float:
        with torch.no_grad():
            f = t(x).flatten(1)
        enrol = (torch.arange(len(ids)) // 8) % 2 == 0
        pred = ids[enrol][torch.cdist(f[~enrol], f[enrol]).argmin(1)]
        return float((pred == ids[~enrol]).float().mean())

    # the obfuscation papers' trend: recognisability falls as the blur / block grows (measured on the
    # transmitted input, as McPherson et al. do before attacking it)
    dcor_blur = [float(distance_correlation(x, InputBlur(r)(x))) for r in (0.0, 1.0, 2.0, 4.0)]
    dcor_pix = [float(distance_correlation(x, InputPixelate(b)(x))) for b in (1, 2, 4, 8)]
    assert _decreasing(dcor_blur) and _decreasing(dcor_pix), (dcor_blur, dcor_pix)
    assert nn_acc(InputBlur(0.0)) >= nn_acc(InputBlur(4.0))


def test_blur_defence_builds_and_runs_the_transform_on_the_device(setup) -> None:
    model, faces = setup
    emb = build_defence("blur", model, layer=LAYER, train=faces, column="gender", knob=2.0)
    assert isinstance(emb.extractor[0], InputBlur) and emb(faces.inputs()).shape == (96, 2)
    ref = build_defence("send-image", model, layer=LAYER, train=faces, column="gender")
    assert ref.transmitted_shape(32) == (3, 32, 32)


@pytest.mark.parametrize("kind", ["adversarial", "siamese-adversarial"])
def test_adversarial_identity_loss_rises_with_weight(setup, kind: str) -> None:
    """DeepObfuscator/PAN's trend: the identity adversary does worse (its CE rises) as the weight grows."""
    model, faces = setup
    cfg = FinetuneConfig(epochs=4, lr=1e-3)
    ces = [build_defence(kind, model, layer=LAYER, train=faces, column="gender", knob=w,
                         config=cfg).privacy_log["adversary"] for w in (0.3, 1.0, 3.0)]
    assert ces[0] < ces[1] < ces[2], ces


def test_calibration_sigma_grows_as_the_target_tightens() -> None:
    class Emb(torch.nn.Module):
        def __init__(self, noise):
            super().__init__()
            self.noise = noise

        def with_noise(self, noise):
            return Emb(noise)

    from privsplit.defenses.noise import GaussianNoise

    def privacy(emb) -> tuple[float, float]:  # a stand-in audit: worst case falls smoothly with sigma
        return 0.032 * (1 + 3 / (1 + emb.noise.sigma)), 0.032

    sigmas = [calibrate_sigma(Emb(GaussianNoise(sigma=1.0)), privacy, target=t).sigma for t in (3.0, 2.0, 1.5)]
    assert sigmas[0] < sigmas[1] < sigmas[2], sigmas
    assert not calibrate_sigma(Emb(GaussianNoise(sigma=1.0)), privacy, target=1.1, hi=2.0).met
    assert list(validation_identities(["a", "a", "b", "a"], min_images=3)) == [0, 1, 3]


def test_demo_builds_a_zoo_defence_and_refuses_the_others(setup) -> None:
    from types import SimpleNamespace

    from privsplit.cli.demo import _defence

    model, faces = setup
    art, p = SimpleNamespace(model=model, primary="gender"), SimpleNamespace(train=faces)
    emb = _defence("gaussian-split", 1.0, art, p, LAYER)
    assert emb.kind == "gaussian-split" and emb.noise.sigma == 1.0
    with pytest.raises(ValueError, match="not a demo defence"):
        _defence("send-image", None, art, p, LAYER)
    best = _defence("robust-advanced", None, art, p, LAYER, tuned=model, dim=1)  # the demo's default defence
    assert best.kind == "robust-advanced" and best.noise.sigma == 0.5 and best.transmitted_shape(32) == (1,)


def test_zoo_embeddings_export_and_reload_as_bundles(setup, tmp_path) -> None:
    from privsplit.defenses import build_embedding, embedding_from_bundles, load_client_bundle, load_server_bundle, save_bundles

    model, faces = setup
    emb = build_defence("gaussian-split", model, layer=LAYER, train=faces, column="gender", knob=0.5)
    c, s = save_bundles(emb, tmp_path / "b", config=model.config, preprocess=faces.preprocess, classes=["F", "M"],
                        primary="gender")
    back = embedding_from_bundles(load_client_bundle(c), load_server_bundle(s))
    assert back.kind == "gaussian-split" and torch.equal(back.noise.std, emb.noise.std)
    with pytest.raises(ValueError, match="build_defence"):
        build_embedding("nopeek", model, layer=LAYER, train=faces, column="gender")


@pytest.mark.parametrize("kind,knob", [("blur", 1.5), ("pixelate", 3.0)])
def test_obfuscation_bundles_carry_their_input_transform(setup, tmp_path, kind: str, knob: float) -> None:
    """blur / pixelate export: the client bundle records the transform, loading rebuilds it, the features match the
    in-process embedding (torch within 1e-5, the ONNX export within its 1e-4 check) -- block 3 on 32 px also
    exercises pixelation's ragged last cell."""
    import json

    from privsplit.defenses import embedding_from_bundles, load_client_bundle, load_server_bundle, save_bundles
    from privsplit.defenses.input_transforms import INPUT_TRANSFORMS

    model, faces = setup
    emb = build_defence(kind, model, layer=LAYER, train=faces, column="gender", knob=knob,
                        config=FinetuneConfig(epochs=1))
    c, s = save_bundles(emb, tmp_path / "b", config=model.config, preprocess=faces.preprocess, classes=["F", "M"],
                        primary="gender")
    man = json.loads((c / "client.json").read_text())
    assert man["input_transform"] == {"kind": kind, INPUT_TRANSFORMS.get(kind).knob: knob if kind == "blur" else 3}
    assert man["format_version"] == 3
    bundle = load_client_bundle(c)
    x = faces.inputs()
    with torch.no_grad():
        want = emb.client_features(x, noisy=False)
        assert torch.allclose(bundle.extractor(x), want, atol=1e-5, rtol=0)
        back = embedding_from_bundles(bundle, load_server_bundle(s))
        assert torch.allclose(back(x), emb(x), atol=1e-5, rtol=0)
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from privsplit.edge.export import export_client_onnx
    from privsplit.edge.onnx_runtime import OnnxExtractor

    rep = export_client_onnx(bundle, tmp_path / "client.onnx")  # raises unless ONNX == torch within 1e-4
    assert rep.max_abs_diff <= 1e-4
    np_out = OnnxExtractor(tmp_path / "client.onnx")(x)
    assert torch.allclose(np_out, want, atol=1e-4, rtol=0)


def test_unknown_input_transform_is_a_clear_bundle_error(setup, tmp_path) -> None:
    """A bundle whose transform this privsplit does not know is refused by name, never loaded without it."""
    from privsplit.defenses import BundleError, load_client_bundle, save_bundles
    from privsplit.defenses.embedding import Embedding
    from privsplit.defenses.input_transforms import INPUT_TRANSFORMS, InputTransform
    from privsplit.models.split import split

    class Swirl(InputTransform):
        kind, knob = "test-swirl", "angle"

        def __init__(self, angle: float) -> None:
            super().__init__()
            self.angle = float(angle)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    model, faces = setup
    extractor, analyzer = split(model, at=LAYER)
    INPUT_TRANSFORMS.register("test-swirl", Swirl)
    try:
        emb = Embedding(kind="blur", layer=LAYER, extractor=torch.nn.Sequential(Swirl(30), extractor), analyzer=analyzer)
        c, _ = save_bundles(emb, tmp_path / "b", config=model.config, preprocess=faces.preprocess, classes=["F", "M"],
                            primary="gender")
        assert isinstance(load_client_bundle(c).extractor[0][0], Swirl)  # known while registered
    finally:
        INPUT_TRANSFORMS.unregister("test-swirl")
    with pytest.raises(BundleError, match=r"input transform.*'test-swirl'.*choose one of: blur, pixelate"):
        load_client_bundle(c)


def test_robust_advanced_trains_only_the_server_and_recovers_noisy_accuracy(setup, tmp_path) -> None:
    """Same device side as ``advanced`` at the same sigma (so the same leak); the analyzer learns the noise."""
    from privsplit.defenses import build_embedding, embedding_from_bundles, load_client_bundle, load_server_bundle, save_bundles

    from privsplit.train import TrainConfig, train_classifier

    _, faces = setup
    torch.manual_seed(0)
    model = vgg16(width=0.0625, input_size=32)
    train_classifier(model, faces, column="gender", config=TrainConfig(epochs=8, batch_size=16, lr=3e-3), progress=False)
    model.eval()
    plain = build_embedding("advanced", model, layer=LAYER, train=faces, column="gender", dim=4, sigma=2.0, tuned=model,
                            progress=False)
    robust = build_defence("robust-advanced", model, layer=LAYER, train=faces, column="gender", knob=2.0, dim=4,
                           tuned=model, analyzer_config=FinetuneConfig(epochs=20, lr=3e-3, batch_size=16))
    assert robust.kind == "robust-advanced"
    assert torch.equal(_features(plain, faces, noisy=False), _features(robust, faces, noisy=False))
    assert torch.equal(plain.noise.std, robust.noise.std) and robust.noise.sigma == plain.noise.sigma == 2.0

    def noisy_ce(emb) -> float:  # the same noise draw for both: the objective the analyzer was trained on
        torch.manual_seed(1)
        with torch.no_grad():
            z = emb.client_features(faces.inputs(), noisy=False)
            z = z + 2.0 * emb.noise.std * torch.randn(4, *z.shape)
            return float(torch.nn.functional.cross_entropy(emb.analyze(z.flatten(0, 1)), faces.labels["gender"].repeat(4)))
    assert noisy_ce(robust) < 0.5 * noisy_ce(plain), (noisy_ce(plain), noisy_ce(robust))
    log = robust.analyzer_training
    assert log["last_epoch_loss"] < log["first_epoch_loss"]
    c, s = save_bundles(robust, tmp_path / "b", config=model.config, preprocess=faces.preprocess, classes=["F", "M"],
                        primary="gender")
    back = embedding_from_bundles(load_client_bundle(c), load_server_bundle(s))
    for a, b in zip(robust.analyzer.state_dict().values(), back.analyzer.state_dict().values()):
        assert torch.equal(a, b)
