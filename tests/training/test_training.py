"""Training and export (training/): the SavedModel contract (docs/architecture.md, "The model directory contract"), the CLI, the data sets.

A model trained in-process for a few steps on real Fashion-MNIST is exported with the real export
code, reloaded with `tf.saved_model.load` and checked against the in-memory Keras model. The CLI is
run as a user would (subprocess): its error lines, a folder data set of generated images, and the
session's `tiny_models_dir`. The slow test measures the committed default model on all 10,000
Fashion-MNIST test images.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import prediction_log_pb2

from training.augment import Augmentation
from training.backbones import BACKBONES, build_model
from training.datasets import DATASETS
from training.datasets.fashion_mnist import LABELS, load_arrays
from training.errors import TrainingError
from training import oodset
from training.export import DIR_MODE, FILE_MODE, export_model, inference_copy, next_version, verify_export
from training.imaging import InputSpec, decode_to_input, fit_to_input
from training.ood import fit as fit_ood, tap_model
from training.schedule import OneCycle
from training.trainer import TrainConfig, train
from training.warmup import ASSETS_EXTRA, WARMUP_FILE

ROOT = Path(__file__).resolve().parents[2]
GREY28 = InputSpec(28, 28, 1)


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode with Pillow, as a client would (not with the graph's own encoder)."""
    buf = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(buf, "PNG")
    return buf.getvalue()


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# --- a model trained in-process and exported with the real export code ------------------------

@pytest.fixture(scope="module")
def test_images(fashion_data) -> tuple[np.ndarray, np.ndarray]:
    arrays = load_arrays(fashion_data)
    return arrays["test_images"][:64], arrays["test_labels"][:64]


@pytest.fixture(scope="module")
def splits(fashion_data):
    return DATASETS["fashion_mnist"].load(fashion_data, GREY28, limit=640, seed=3)


@pytest.fixture(scope="module")
def trained(splits):
    """small_cnn after a few real training steps (so batch-norm statistics are not the defaults)."""
    model = build_model(BACKBONES["small_cnn"], GREY28, len(splits.labels), "none")
    train(model, splits, DATASETS["fashion_mnist"].augmentation,
          TrainConfig(epochs=1, batch_size=64, learning_rate=3e-3), echo=lambda line: None)
    return model


@pytest.fixture(scope="module")
def detector(trained, splits):
    """The out-of-distribution detector of `trained`, fitted and calibrated on its own splits."""
    return fit_ood(trained, BACKBONES["small_cnn"].ood_layer, splits.train, splits.val).detector


@pytest.fixture(scope="module")
def exported(trained, detector, test_images, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("export") / "fashion"
    return export_model(trained, LABELS, GREY28, base, test_images[0][:16], model_name="fashion", ood=detector)


def jpeg_and_pillow_pixels(images: np.ndarray, quality: int = 75) -> tuple[list[bytes], np.ndarray]:
    """Each grey image as a JPEG file, and the pixels Pillow (hence the gateway) decodes from it."""
    jpegs, pixels = [], []
    for image in images:
        buf = io.BytesIO()
        Image.fromarray(image.squeeze(-1)).save(buf, "JPEG", quality=quality)
        jpegs.append(buf.getvalue())
        pixels.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())))[..., np.newaxis])
    return jpegs, np.stack(pixels)


def test_export_writes_version_1_with_warmup_records(exported):
    assert exported.name == "1"
    assert (exported / "saved_model.pb").is_file()
    assert [p.name for p in exported.parent.iterdir()] == ["1"]  # no temporary left behind
    size = sum(f.stat().st_size for f in exported.rglob("*") if f.is_file())
    assert size < 5e6


def test_pixel_signature_matches_the_in_memory_keras_model(exported, trained, test_images):
    images = test_images[0]
    served = tf.saved_model.load(str(exported)).signatures["serving_default"](images=tf.constant(images))
    expected = trained(images.astype(np.float32), training=False).numpy()
    assert np.max(np.abs(served["scores"].numpy() - expected)) <= 1e-5
    np.testing.assert_allclose(served["scores"].numpy().sum(axis=1), 1.0, atol=1e-5)
    assert served["classes"].numpy().astype(str).tolist() == [LABELS] * len(images)


def test_bytes_signature_gives_the_pixel_top1_on_png_inputs(exported, test_images):
    images = test_images[0]
    loaded = tf.saved_model.load(str(exported))
    by_pixels = loaded.signatures["serving_default"](images=tf.constant(images))["scores"].numpy()
    pngs = tf.constant([png_bytes(image) for image in images])
    by_bytes = loaded.signatures["image_bytes"](image_bytes=pngs)
    assert by_bytes["scores"].numpy().argmax(axis=1).tolist() == by_pixels.argmax(axis=1).tolist()
    assert by_bytes["classes"].numpy().astype(str).tolist() == [LABELS] * len(images)


def test_bytes_signature_decodes_converts_and_resizes_colour_jpegs(exported, test_images):
    """A 280x280 RGB JPEG of a test image is shrunk to 28x28 grey in the graph and still recognised.

    The enlarge-JPEG-shrink round trip moves pixels a little, so the image used is the one the
    (briefly trained) model is surest of: a near-tie would make top-1 a coin toss, not a test."""
    loaded = tf.saved_model.load(str(exported))
    direct_all = loaded.signatures["serving_default"](images=tf.constant(test_images[0]))["scores"].numpy()
    top2 = np.sort(direct_all, axis=1)[:, -2:]
    pick = int(np.argmax(top2[:, 1] - top2[:, 0]))
    image = test_images[0][pick].squeeze(-1)
    big = Image.fromarray(image).resize((280, 280), Image.Resampling.BILINEAR).convert("RGB")
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=95)
    scores = loaded.signatures["image_bytes"](image_bytes=tf.constant([buf.getvalue()]))["scores"].numpy()
    assert scores.shape == (1, len(LABELS))
    assert scores.argmax() == direct_all[pick].argmax()


def test_signatures_are_exactly_as_the_contract_says(exported):
    signatures = tf.saved_model.load(str(exported)).signatures
    assert set(signatures) == {"serving_default", "image_bytes"}
    for name, key, dtype, shape in (("serving_default", "images", tf.uint8, [None, 28, 28, 1]),
                                    ("image_bytes", "image_bytes", tf.string, [None])):
        inputs = signatures[name].structured_input_signature[1]
        assert list(inputs) == [key]
        assert inputs[key].dtype == dtype and inputs[key].shape.as_list() == shape
        outputs = signatures[name].structured_outputs
        assert set(outputs) == {"scores", "classes", "ood_score", "ood_threshold"}
        assert outputs["scores"].dtype == tf.float32 and outputs["scores"].shape.as_list() == [None, 10]
        assert outputs["classes"].dtype == tf.string and outputs["classes"].shape.as_list() == [None, 10]
        for key in ("ood_score", "ood_threshold"):
            assert outputs[key].dtype == tf.float32 and outputs[key].shape.as_list() == [None]


def test_ood_outputs_are_the_detectors_with_no_skew_between_signatures(exported, trained, detector, test_images):
    """Served = trained (the in-memory detector on the in-memory model); pixels = bytes, on PNG
    and on JPEG files decoded as Pillow does; the threshold is the calibrated one in every row."""
    images = test_images[0]
    signatures = tf.saved_model.load(str(exported)).signatures
    served = signatures["serving_default"](images=tf.constant(images))
    tapped, _ = tap_model(trained, detector.layer)(images.astype(np.float32), training=False)
    np.testing.assert_allclose(served["ood_score"].numpy(), detector.score(tapped).numpy(), rtol=1e-4)
    assert served["ood_score"].numpy().min() >= 0
    assert served["ood_threshold"].numpy().tolist() == [float(detector.threshold.numpy())] * len(images)

    by_png = signatures["image_bytes"](image_bytes=tf.constant([png_bytes(image) for image in images]))
    assert np.array_equal(by_png["ood_score"].numpy(), served["ood_score"].numpy())
    assert np.array_equal(by_png["ood_threshold"].numpy(), served["ood_threshold"].numpy())
    jpegs, pillow = jpeg_and_pillow_pixels(images)
    by_jpeg = signatures["image_bytes"](image_bytes=tf.constant(jpegs))["ood_score"].numpy()
    by_pillow = signatures["serving_default"](images=tf.constant(pillow))["ood_score"].numpy()
    np.testing.assert_allclose(by_jpeg, by_pillow, rtol=1e-6)


def test_an_export_is_readable_by_any_user(exported):
    """Directories 0755 and files 0644 whatever the umask: a model server running as another uid
    (the container image's) can load a version exported in a working tree."""
    import os
    import shutil
    import stat

    paths = [exported, *exported.rglob("*")]
    assert any(p.is_file() for p in paths) and any(p.is_dir() for p in paths[1:])
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == (DIR_MODE if path.is_dir() else FILE_MODE), path
    if os.geteuid() != 0:
        return
    # As root, really read every file as `nobody`, from a copy outside pytest's private (0700) tree.
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="export-readable-"))
    try:
        shared.chmod(0o755)
        shutil.copytree(exported, shared / "1")  # copy2 keeps the mode bits
        files = [str(p) for p in (shared / "1").rglob("*") if p.is_file()]
        private = shared / "private"
        private.write_bytes(b"x")
        private.chmod(0o600)

        def cat_as_nobody(*names: str) -> subprocess.CompletedProcess:
            return subprocess.run(["cat", *names], preexec_fn=lambda: os.setuid(65534), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, timeout=60)

        assert cat_as_nobody(str(private)).returncode != 0  # the check can fail: nobody really is someone else
        result = cat_as_nobody(*files)
        assert result.returncode == 0, result.stderr
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_no_augmentation_or_randomness_in_the_serving_graph(exported):
    """Augmentation lives in the input pipeline only: the exported graph has no random ops."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((exported / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
    assert "Conv2D" in ops  # the model really is in there
    assert not {op for op in ops if "Random" in op}


def test_warmup_file_holds_predict_requests_for_both_signatures(exported):
    path = exported / ASSETS_EXTRA / WARMUP_FILE
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    requests = [log.predict_log.request for log in logs]
    assert {r.model_spec.signature_name for r in requests} == {"serving_default", "image_bytes"}
    for request in requests:
        key = "images" if request.model_spec.signature_name == "serving_default" else "image_bytes"
        assert list(request.inputs) == [key]
        assert request.model_spec.name == "fashion"


def test_a_failed_verification_leaves_no_version_and_no_temporary_dir(trained, test_images, tmp_path):
    base = tmp_path / "fashion"
    seen = []

    def verify_then_fail(path, *args, **kwargs):
        verify_export(path, *args, **kwargs)  # the real verification passes...
        seen.append(sorted(p.name for p in path.iterdir()))
        raise RuntimeError("injected failure after verification")  # ...then the disk "fails"

    with pytest.raises(RuntimeError, match="injected"):
        export_model(trained, LABELS, GREY28, base, test_images[0][:4], model_name="fashion",
                     verify=verify_then_fail)
    assert seen and "saved_model.pb" in seen[0]  # a complete export existed in the temporary dir
    assert list(base.iterdir()) == []
    # the next successful export still gets version 1
    assert export_model(trained, LABELS, GREY28, base, test_images[0][:4], model_name="fashion").name == "1"


def test_next_version_counts_numeric_dirs_only(tmp_path):
    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "7", "10", ".tmp-export-x", "latest"):
        (tmp_path / name).mkdir()
    (tmp_path / "99").write_text("a file, not a version")
    assert next_version(tmp_path) == 11


# --- image fitting, augmentation, schedule ------------------------------------------------------

def test_images_already_at_the_input_size_pass_through_bit_for_bit():
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    assert np.array_equal(fit_to_input(image, GREY28).numpy(), image)
    assert np.array_equal(decode_to_input(png_bytes(image), GREY28).numpy(), image)


def test_colour_becomes_grey_by_luma_like_pillow_and_grey_becomes_rgb():
    rgb = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    grey = fit_to_input(rgb, GREY28).numpy().squeeze(-1).astype(int)
    pillow = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    assert np.max(np.abs(grey - pillow)) <= 1
    as_rgb = fit_to_input(rgb[..., :1], InputSpec(28, 28, 3)).numpy()
    assert np.array_equal(as_rgb, np.repeat(rgb[..., :1], 3, axis=-1))
    shrunk = fit_to_input(np.full((300, 200, 4), 200, np.uint8), InputSpec(32, 48, 3)).numpy()
    assert shrunk.shape == (32, 48, 3) and np.all(shrunk == 200)  # alpha dropped, flat stays flat


def test_augmentation_flips_and_shifts_but_keeps_shape_and_content():
    images = np.zeros((64, 28, 28, 1), np.uint8)
    images[:, 10:18, 4:8] = 255  # a bar left of centre
    out, labels = Augmentation(max_shift=0.08)(tf.constant(images), tf.range(64))
    out = out.numpy()
    assert out.shape == images.shape and out.dtype == np.uint8 and labels.shape == (64,)
    assert np.all(out.reshape(64, -1).sum(axis=1) == images[0].sum())  # shifts of ±2 keep the bar whole
    columns = [np.nonzero(o.any(axis=(0, 2)))[0].mean() for o in out]
    assert min(columns) < 13.5 < max(columns)  # some flipped to the right half, some not
    rows = {np.nonzero(o.any(axis=(1, 2)))[0][0] for o in out}
    assert rows <= set(range(8, 13)) and len(rows) > 1  # moved vertically by at most 2, never flipped


def test_one_cycle_warms_up_then_decays():
    schedule = OneCycle(peak=1e-2, total_steps=100, warmup_fraction=0.2)
    lr = [float(schedule(step)) for step in range(101)]
    assert lr[0] == pytest.approx(1e-3)
    assert max(lr) == pytest.approx(1e-2) and int(np.argmax(lr)) == 20
    assert lr[100] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lr[20:], lr[21:]))


# --- data sets --------------------------------------------------------------------------------

def write_image_folder(root: Path, per_class: int = 16) -> list[str]:
    """Three classes a small CNN can tell apart quickly, as JPEG, RGB PNG and grey PNG files."""
    rng = np.random.default_rng(0)
    classes = ["bright", "dark", "stripes"]
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(40, 90, size=2)
            if name == "bright":
                pixels = rng.integers(170, 255, (h, w, 3))
            elif name == "dark":
                pixels = rng.integers(0, 80, (h, w, 3))
            else:
                pixels = np.zeros((h, w, 3), int)
                pixels[::6] = 255
            image = Image.fromarray(pixels.astype(np.uint8))
            if i % 3 == 0:
                image.save(root / name / f"{i}.jpg", quality=90)
            elif i % 3 == 1:
                image.save(root / name / f"{i}.png")
            else:
                image.convert("L").save(root / name / f"{i}.PNG")
    return classes


def test_folder_data_set_splits_per_class_and_streams_images_at_the_input_size(tmp_path):
    classes = write_image_folder(tmp_path)
    splits = DATASETS["folder"].load(tmp_path, InputSpec(32, 32, 3), limit=None, seed=0)
    assert splits.labels == classes
    assert (splits.train_count, splits.val_count, splits.test_name) == (3 * 14, 3 * 2, "val")
    image, label = next(iter(splits.train))
    assert image.shape == (32, 32, 3) and image.dtype == tf.uint8 and 0 <= int(label) < 3


def test_folder_data_set_with_train_and_val_dirs(tmp_path):
    write_image_folder(tmp_path / "train", per_class=4)
    write_image_folder(tmp_path / "val", per_class=2)
    splits = DATASETS["folder"].load(tmp_path, InputSpec(16, 16, 1), limit=5, seed=0)
    assert (splits.train_count, splits.val_count, splits.test_count) == (5, 6, 6)
    assert {int(y) for _, y in splits.val} == {0, 1, 2}


@pytest.mark.parametrize("layout, message", [
    ({}, "needs at least two class folders"),
    ({"cats": ["a.png"]}, "found only cats"),
    ({"cats": ["notes.txt"], "dogs": ["readme.md"]}, "needs at least two class folders"),
    ({"cats": ["a.png"], "dogs": ["b.jpg"]}, r"dogs/b\.jpg is not a JPEG or PNG image"),
])
def test_folder_data_set_explains_a_bad_layout(tmp_path, layout, message):
    for folder, files in layout.items():
        (tmp_path / folder).mkdir()
        for name in files:
            if name.endswith(".png"):
                Image.new("RGB", (8, 8)).save(tmp_path / folder / name, "PNG")
            else:
                (tmp_path / folder / name).write_text("not an image")
    with pytest.raises(TrainingError, match=message):
        DATASETS["folder"].load(tmp_path, InputSpec(16, 16, 3), limit=None, seed=0)


def test_a_corrupt_idx_file_is_reported_not_crashed(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 6)
    with pytest.raises(TrainingError, match="truncated idx header|promises"):
        load_arrays(tmp_path)


# --- the command line -------------------------------------------------------------------------

@pytest.mark.slow  # four runs of the CLI, two of them calibrating on the data
def test_reexport_writes_the_same_weights_as_the_next_version_or_in_place(exported, test_images, tmp_path, capsys):
    import shutil
    base = tmp_path / "fashion"
    shutil.copytree(exported.parent, base)
    before = tf.saved_model.load(str(base / "1")).signatures["serving_default"](images=tf.constant(test_images[0]))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "training.reexport", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    data = ["--limit", "640", "--seed", "3"]  # as `trained` was: the same validation split calibrates
    for args, version in (([str(base / "1"), *data], "2"), ([str(base / "1"), "--replace", *data], "1")):
        result = run(*args, "--report-dir", str(tmp_path / f"report-{version}"))
        assert result.returncode == 0, result.stderr
        assert f"as {base / version} " in result.stdout
        after = tf.saved_model.load(str(base / version)).signatures["serving_default"](images=tf.constant(test_images[0]))
        assert np.array_equal(after["scores"].numpy(), before["scores"].numpy())
        # refitted on the same images, met in another (shuffled) order: float sums differ a little
        np.testing.assert_allclose(after["ood_score"].numpy(), before["ood_score"].numpy(), rtol=1e-3)
        assert (base / version / ASSETS_EXTRA / WARMUP_FILE).is_file()
        assert "answered not sure" in (tmp_path / f"report-{version}" / "ood.md").read_text()
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]  # nothing left over from --replace

    # The refusals, in this process (the command's own main(): no second TensorFlow start-up to wait for).
    from training import reexport

    for args, expected in (([str(base / "1"), "--backbone", "mobilenet_v2"], "takes colour images"),
                           ([str(base)], "is not a model version directory")):
        assert reexport.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


@pytest.mark.parametrize("args, expected", [
    (["--data-dir", "/nonexistent/fashion"], "Fashion-MNIST not found: /nonexistent/fashion is not a directory "
                                             "(install the Debian package dataset-fashion-mnist"),
    (["--data-dir", "{empty}"], "install the Debian package dataset-fashion-mnist"),
    (["--dataset", "folder"], "--dataset folder needs --data-dir DIR"),
])
def test_cli_problems_are_one_clear_line_and_exit_code_2(args, expected, tmp_path):
    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    result = cli(*args, "--models-dir", str(tmp_path / "models"), "--epochs", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "models").exists()


def test_weights_a_backbone_does_not_offer_are_refused_clearly(tmp_path):
    with pytest.raises(TrainingError, match="backbone small_cnn has no imagenet weights"):
        build_model(BACKBONES["small_cnn"], GREY28, 10, "imagenet")
    with pytest.raises(TrainingError, match="no such file"):
        build_model(BACKBONES["small_cnn"], GREY28, 10, str(tmp_path / "missing.weights.h5"))


def test_weights_from_an_earlier_run_are_loaded(trained, tmp_path):
    inference_copy(trained).save_weights(tmp_path / "model.weights.h5")  # as the report does
    again = build_model(BACKBONES["small_cnn"], GREY28, 10, str(tmp_path / "model.weights.h5"))
    for a, b in zip(trained.get_weights(), again.get_weights()):
        assert np.array_equal(a, b)
    with pytest.raises(TrainingError, match="does not fit"):
        build_model(BACKBONES["small_cnn"], GREY28, 3, str(tmp_path / "model.weights.h5"))


def test_cli_help_documents_every_option():
    from training.cli import build_parser

    text = build_parser().format_help()
    for option in ("--dataset", "--data-dir", "--backbone", "--weights", "--epochs", "--batch-size", "--limit",
                   "--seed", "--model-name", "--models-dir", "--profile", "--report-dir", "--learning-rate",
                   "fashion_mnist", "folder", "small_cnn", "imagenet", "quick", "full", "dataset-fashion-mnist"):
        assert option in text


def test_cli_tiny_model_is_a_servable_version_1(tiny_models_dir):
    version = tiny_models_dir / "fashion" / "1"
    loaded = tf.saved_model.load(str(version))
    out = loaded.signatures["serving_default"](images=tf.zeros([2, 28, 28, 1], tf.uint8))
    assert out["scores"].shape == (2, 10) and out["ood_score"].shape == (2,)
    assert out["classes"].numpy()[0].astype(str).tolist() == LABELS
    report_dir = tiny_models_dir.parent / f"report-{tiny_models_dir.name}"  # see conftest.run_training
    report = json.loads((report_dir / "report.json").read_text())
    ood = report["ood"]
    assert out["ood_threshold"].numpy().tolist() == [pytest.approx(ood["threshold"], rel=1e-6)] * 2
    assert ood["layer"] == "block2_out" and ood["calibration_count"] == report["val_count"]
    assert 0.9 <= ood["in_distribution_pass"] <= 1.0  # calibrated at 97.5 % of the validation images
    assert [row["min_score"] for row in ood["table"]] == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert set(ood["ood_set"]["groups"]) == set(oodset.GROUPS)
    page = (report_dir / "report.md").read_text()
    assert "## Knowing what it does not know" in page and (report_dir / "coverage.png").is_file()


def test_the_ood_set_is_made_offline_and_the_same_for_a_seed():
    """Shipped photos byte for byte; generated images reproducible; all decodable by the gateway."""
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    assert [i.data for i in oodset.textures(rng())] == [i.data for i in oodset.textures(rng())]
    assert [i.data for i in oodset.scenes(rng())] == [i.data for i in oodset.scenes(rng())]
    photos = oodset.photos()
    assert len(photos) == len(oodset.PHOTOS) >= 16 and len({p.data for p in photos}) == len(photos)
    pixels = oodset.to_pixels(photos + oodset.drawings(), 28, 28, 1)
    assert pixels.shape == (len(photos) + len(oodset.DRAWINGS), 28, 28, 1) and pixels.dtype == np.uint8


def test_selective_figures_are_the_gateway_decisions():
    from training.selective import judge

    labels = ["a", "b", "c"]
    probabilities = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.1, 0.85, 0.05]], np.float32)
    truth = np.array([0, 1, 0, 1])  # the second one is confidently wrong
    ood_set = {"names": ["photo/x", "texture/y"], "groups": ["photo", "texture"],
               "probabilities": probabilities[:2], "ood_scores": np.array([5.0, 0.5])}
    numbers = judge(labels, probabilities, truth, np.array([1.0, 1.0, 1.0, 3.0]), 2.0, ood_set).numbers
    assert numbers["rules_only"] == {"coverage": 0.75, "accuracy": pytest.approx(2 / 3), "confident": 3}
    assert numbers["with_ood_guard"] == {"coverage": 0.5, "accuracy": 0.5, "confident": 2}
    assert numbers["in_distribution_pass"] == 0.75
    assert numbers["ood_set"]["groups"]["photo"] == {"count": 1, "ood_rejected": 1.0, "not_sure": 1.0}
    assert numbers["ood_set"]["groups"]["texture"] == {"count": 1, "ood_rejected": 0.0, "not_sure": 0.0}
    assert numbers["ood_set"]["photos"][0]["reason"] == "OUT_OF_DISTRIBUTION"


def test_cli_trains_and_exports_a_folder_data_set(tmp_path):
    classes = write_image_folder(tmp_path / "data")
    result = cli("--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--epochs", "2",
                 "--batch-size", "16", "--model-name", "shapes", "--models-dir", str(tmp_path / "models"),
                 "--report-dir", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    assert "epoch  2/2" in result.stdout and f"report: {tmp_path / 'report' / 'report.md'}" in result.stdout
    version = tmp_path / "models" / "shapes" / "1"
    signatures = tf.saved_model.load(str(version)).signatures
    assert signatures["serving_default"].structured_input_signature[1]["images"].shape.as_list() == [None, 64, 64, 3]
    grey_png = png_bytes(np.full((50, 70, 1), 20, np.uint8))
    out = signatures["image_bytes"](image_bytes=tf.constant([grey_png]))
    assert out["classes"].numpy()[0].astype(str).tolist() == classes
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["labels"] == classes and len(report["epochs"]) == 2 and report["test_split"] == "val"
    for name in ("report.md", "curves.png", "confusion.png", "model.weights.h5"):
        assert (tmp_path / "report" / name).is_file()


# --- the committed default model --------------------------------------------------------------

def test_committed_model_reads_jpegs_exactly_as_pillow_does(committed_model, test_images):
    """`image_bytes` on a JPEG gives the scores and OOD score `serving_default` gives on Pillow's
    pixels of that file: a direct client of the model server sees what the gateway (Pillow) sees."""
    jpegs, pixels = jpeg_and_pillow_pixels(test_images[0])
    signatures = tf.saved_model.load(str(committed_model)).signatures
    by_bytes = signatures["image_bytes"](image_bytes=tf.constant(jpegs))
    by_pixels = signatures["serving_default"](images=tf.constant(pixels))
    assert np.max(np.abs(by_bytes["scores"].numpy() - by_pixels["scores"].numpy())) <= 1e-6
    np.testing.assert_allclose(by_bytes["ood_score"].numpy(), by_pixels["ood_score"].numpy(), rtol=1e-6)
    assert np.array_equal(by_bytes["ood_threshold"].numpy(), by_pixels["ood_threshold"].numpy())


@pytest.mark.slow
def test_committed_model_reaches_93_percent_on_the_full_test_set(committed_model, fashion_data):
    arrays = load_arrays(fashion_data)
    images, labels = arrays["test_images"], arrays["test_labels"]
    assert len(images) == 10_000
    predict = tf.saved_model.load(str(committed_model)).signatures["serving_default"]
    predicted = np.concatenate([predict(images=tf.constant(images[i:i + 1000]))["scores"].numpy().argmax(axis=1)
                                for i in range(0, len(images), 1000)])
    accuracy = float((predicted == labels).mean())
    assert accuracy >= 0.93, f"committed model: {accuracy:.4f} test accuracy"
    size = sum(f.stat().st_size for f in committed_model.rglob("*") if f.is_file())
    assert size <= 5e6, f"committed model is {size / 1e6:.1f} MB"


@pytest.mark.slow
def test_committed_model_knows_what_it_does_not_know(committed_model, fashion_data):
    """The gateway's default rules plus the exported OOD guard: confident on >= 93 % of the first
    1,000 test images and right on >= 96 % of those; photos of other things answered not sure."""
    from gateway.thresholds import Thresholds, decide

    predict = tf.saved_model.load(str(committed_model)).signatures["serving_default"]

    def decisions(pixels: np.ndarray) -> list:
        out = predict(images=tf.constant(pixels))
        return [decide(LABELS, row.tolist(), Thresholds(), ood_score=float(s), ood_threshold=float(t))
                for row, s, t in zip(out["scores"].numpy(), out["ood_score"].numpy(), out["ood_threshold"].numpy())]

    arrays = load_arrays(fashion_data)
    answers = decisions(arrays["test_images"][:1000])
    confident = [d for d, y in zip(answers, arrays["test_labels"][:1000]) if d.confident]
    right = [d for d, y in zip(answers, arrays["test_labels"][:1000]) if d.confident and d.label == LABELS[y]]
    assert len(confident) >= 930 and len(right) >= 0.96 * len(confident), (len(confident), len(right))

    photos = oodset.photos()
    unsure = [item.name for item, d in zip(photos, decisions(oodset.to_pixels(photos, 28, 28, 1))) if not d.confident]
    assert len(unsure) >= len(photos) - 1, sorted(set(p.name for p in photos) - set(unsure))
