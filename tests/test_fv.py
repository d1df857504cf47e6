"""Feature vectors: the torch-free checkpoint reader, the EfficientNet-Lite0 conversion
(proved by its ImageNet head on real photos), the hub loading path, batched embedding and
the engines (TensorFlow on the SavedModel, its TF Lite conversion, the fallback).

The model is converted once per test session into a temporary model cache.
"""

from __future__ import annotations

import collections
import io
import itertools
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npimage.fv import efficientnet_lite, load_extractor, models, tflite
from npimage.fv.models import (
    HubExtractor,
    cache_key,
    cpu_share,
    ensure_default,
    fit_square,
    load,
    model_id_prefix,
)
from npimage.fv.torchfile import LEGACY_MAGIC, CheckpointError, load_state_dict

REPO = Path(__file__).resolve().parents[1]
ICONIC = REPO.parent / "shared/datasets/grocery-store/dataset/iconic-images-and-descriptions"
SKIMAGE_DATA = Path(__import__("skimage").__file__).parent / "data"


# --- a tiny fake `torch` so that tests can write real checkpoint files without PyTorch ---


class _Storage:
    """A storage to pickle: its key and float32 data."""

    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, data.astype("<f4")


class _Tensor:
    """A tensor to pickle: storage, offset, shape and strides (in elements)."""

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple) -> None:
        self.args = (storage, offset, shape, stride)

    def __reduce__(self):
        fake_utils = sys.modules["torch._utils"]
        return fake_utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules `torch` and `torch._utils` with the names a checkpoint pickle refers to."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    float_storage = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage = float_storage

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return float_storage


class _Pickler(pickle.Pickler):
    def __init__(self, fh, storage_type, view: bool = False) -> None:
        super().__init__(fh, protocol=2)
        self.storage_type, self.view, self.seen = storage_type, view, {}

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            self.seen[obj.key] = obj
            meta = (obj.key, 0, obj.data.size) if self.view else None
            return ("storage", self.storage_type, obj.key, "cpu", obj.data.size, meta)
        return None


def _sample() -> tuple[dict, dict[str, np.ndarray]]:
    """A state dict sharing one storage between tensors, with an offset and a transpose."""
    base = np.arange(24, dtype=np.float32)
    shared = _Storage("0", base)
    state = collections.OrderedDict(
        conv=_Tensor(shared, 0, (2, 3, 2), (6, 2, 1)),
        tail=_Tensor(shared, 12, (3, 4), (4, 1)),
        transposed=_Tensor(shared, 0, (4, 3), (1, 4)),  # columns of a (3, 4) matrix
        scalar=_Tensor(_Storage("1", np.array([7.0])), 0, (), ()),
    )
    expected = {
        "conv": base[:12].reshape(2, 3, 2),
        "tail": base[12:].reshape(3, 4),
        "transposed": base[:12].reshape(3, 4).T,
        "scalar": np.array(7.0, np.float32),
    }
    return state, expected


def _write_legacy(path: Path, storage_type, view: bool = False) -> dict[str, np.ndarray]:
    state, expected = _sample()
    with path.open("wb") as fh:
        for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, fh, protocol=2)
        pickler = _Pickler(fh, storage_type, view)
        pickler.dump(state)
        pickle.dump(sorted(pickler.seen), fh, protocol=2)
        for key in sorted(pickler.seen):
            data = pickler.seen[key].data
            fh.write(struct.pack("<q", data.size) + data.tobytes())
    return expected


def _write_zip(path: Path, storage_type) -> dict[str, np.ndarray]:
    state, expected = _sample()
    buf = io.BytesIO()
    pickler = _Pickler(buf, storage_type)
    pickler.dump(state)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        for key, storage in pickler.seen.items():
            zf.writestr(f"archive/data/{key}", storage.data.tobytes())
    return expected


@pytest.mark.parametrize("layout", ["legacy", "legacy-view", "zip"])
def test_checkpoint_reader_rebuilds_offsets_strides_and_shapes(tmp_path, fake_torch, layout):
    path = tmp_path / "sample.pth"
    if layout == "zip":
        expected = _write_zip(path, fake_torch)
    else:
        expected = _write_legacy(path, fake_torch, view=layout == "legacy-view")
    got = load_state_dict(path)
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)
        assert got[name].flags.c_contiguous


def test_checkpoint_reader_refuses_code_and_garbage(tmp_path):
    evil = tmp_path / "evil.pth"
    with evil.open("wb") as fh:
        for header in (LEGACY_MAGIC, 1001, {}):
            pickle.dump(header, fh, protocol=2)
        pickle.dump(os.system, fh, protocol=2)  # a pickle that would import os.system
    with pytest.raises(CheckpointError, match=r"os\.system|posix\.system"):
        load_state_dict(evil)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_state_dict(garbage)


def test_shipped_weights_read_without_torch():
    sd = load_state_dict(efficientnet_lite.weights_file())
    assert "torch" not in sys.modules  # read by our own unpickler
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.weight"].dtype == np.float32
    assert sd["_bn1.running_var"].min() > 0
    n_params = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert n_params == 4_694_024  # EfficientNet-Lite0 with its 1000-class head
    efficientnet_lite.check_keys(sd)


def test_block_table_matches_lite0():
    blocks = efficientnet_lite.blocks()
    assert len(blocks) == 16
    assert [b.stride for b in blocks].count(2) == 4  # 224 -> 7 with the stride-2 stem
    assert all(a.cout == b.cin for a, b in itertools.pairwise(blocks))
    assert (blocks[0].cin, blocks[-1].cout) == (32, 320)


def test_wrong_weights_are_refused():
    sd = load_state_dict(efficientnet_lite.weights_file())
    sd["_blocks.3._depthwise_conv.weight"] = np.zeros((144, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv"):
        efficientnet_lite.check_keys(sd)


# --- the converted model -------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def lite0(model_cache):
    """The default model through TensorFlow, converted once into the session's cache."""
    return load_extractor("efficientnet-lite0", model_cache, engine="tf-fp32")


@pytest.fixture(scope="session")
def lite0_tflite(lite0, model_cache):
    """The default model through its TF Lite conversion (fp32), made once per session."""
    return load_extractor("efficientnet-lite0", model_cache, engine="tflite-fp32")


def _top1(extractor, images: list[Image.Image]) -> list[int]:
    return [int(i) for i in extractor.logits(images).argmax(axis=1)]


def test_conversion_classifies_shipped_photos(lite0):
    """ImageNet head of the converted model on photos that scikit-image ships."""
    cat = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")
    coffee = Image.open(SKIMAGE_DATA / "coffee.png").convert("RGB")
    cat_top1, coffee_top1 = _top1(lite0, [cat, coffee])
    assert cat_top1 in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert coffee_top1 == 967  # espresso


@pytest.mark.datasets
def test_conversion_classifies_grocery_photos(lite0):
    """Granny Smith 948, lemon 951, banana 954: the grocery-store iconic photos."""
    if not ICONIC.is_dir():
        pytest.skip(f"grocery-store dataset absent: {ICONIC} (../shared/datasets)")
    names = {"Apple/Granny-Smith": 948, "Lemon": 951, "Banana": 954}
    images = [
        Image.open(next((ICONIC / "Fruit" / n).glob("*_Iconic.jpg"))).convert("RGB")
        for n in names
    ]
    assert _top1(lite0, images) == list(names.values())


def test_saved_model_loads_with_hub_and_tf(lite0, model_cache):
    import tensorflow as tf
    import tensorflow_hub as hub

    folder = ensure_default(model_cache)
    assert lite0.model_id.startswith("efficientnet-lite0@")
    assert lite0.model_id.endswith("-tf-fp32-pad224") and lite0.dim == 1280
    batch = tf.random.uniform([2, 224, 224, 3], dtype=tf.float32)
    for obj in (hub.load(str(folder)), tf.saved_model.load(str(folder))):
        assert obj(batch).shape == (2, 1280)
        assert obj.logits(batch).shape == (2, 1000)


def test_conversion_is_done_once_and_atomically(lite0, model_cache):
    folder = ensure_default(model_cache)
    stamp = (folder / "saved_model.pb").stat().st_mtime_ns
    assert ensure_default(model_cache) == folder
    assert (folder / "saved_model.pb").stat().st_mtime_ns == stamp
    assert not [p.name for p in model_cache.rglob(".*")]  # no temporary left


def test_embed_gives_unit_rows_independent_of_batching(lite0):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64 + 9 * i, 80, 3), np.uint8))
              for i in range(5)]
    images.append(Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB"))
    together = lite0.embed(images)
    assert together.shape == (6, 1280) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    alone = np.concatenate([lite0.embed([img]) for img in images])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert lite0.embed([]).shape == (0, 1280)


def test_cosine_ranks_an_edited_copy_above_other_pictures(lite0):
    cat = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")
    buf = io.BytesIO()
    cat.resize((300, 200)).save(buf, "JPEG", quality=60)
    copy = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    others = [Image.open(SKIMAGE_DATA / n).convert("RGB") for n in ("coffee.png", "rocket.jpg")]
    v = lite0.embed([cat, copy, *others]).astype(np.float16).astype(np.float32)  # as stored
    cos = v[0] @ v[1:].T / np.linalg.norm(v, axis=1)[1:] / np.linalg.norm(v[0])
    assert cos[0] > 0.95
    assert cos[0] > cos[1:].max() + 0.2


def test_fit_square_keeps_the_whole_picture_on_white():
    wide = Image.new("RGB", (200, 100), (0, 0, 0))
    padded = fit_square(wide, 50, "pad")
    assert padded.shape == (50, 50, 3)
    assert (padded[:10] == 255).all() and (padded[-10:] == 255).all()  # white bands
    assert (padded[15:35] == 0).all()  # the picture, whole, in the middle
    assert (fit_square(wide, 50, "squash") == 0).all()
    assert (fit_square(wide, 50, "crop") == 0).all()
    with pytest.raises(ValueError, match="unknown fit"):
        fit_square(wide, 50, "stretch")


# --- any other model: a local SavedModel folder through the same hub path -----------------


def _save_tiny_model(folder: Path, size: int | None) -> None:
    """A SavedModel mapping [N, size, size, 3] to 3 channel means and 1 constant."""
    import tensorflow as tf

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def __call__(self, images):
            means = tf.reduce_mean(images, axis=[1, 2])
            return tf.concat([means, tf.ones_like(means[:, :1])], axis=1)

    tf.saved_model.save(Tiny(), str(folder))


def test_local_folder_loads_with_declared_input_size(tmp_path, model_cache):
    folder = tmp_path / "tiny"
    _save_tiny_model(folder, 64)
    extractor = load(str(folder), model_cache, engine="tflite-fp32")
    assert extractor.input_size == 64 and extractor.dim == 4
    assert extractor.model_id.startswith(f"{folder}@") and extractor.model_id.endswith("-pad64")
    assert extractor.engine == "tflite-fp32"  # converted, like the default model
    assert extractor.model_id.startswith(model_id_prefix(str(folder), model_cache,
                                                         "tflite-fp32"))
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    vec = extractor.embed([red])[0]
    np.testing.assert_allclose(vec, np.array([1, 0, 0, 1]) / np.sqrt(2), atol=1e-6)


def test_local_folder_without_fixed_size_uses_default(tmp_path, model_cache):
    folder = tmp_path / "free"
    _save_tiny_model(folder, None)
    extractor = load(str(folder), model_cache, fit="squash")
    assert extractor.input_size == 224
    assert extractor.model_id.endswith("-squash224")


def test_unknown_folder_is_a_clear_error(tmp_path, model_cache):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load(str(tmp_path / "missing"), model_cache)


def test_cpu_share_follows_the_setting(monkeypatch):
    monkeypatch.setenv("NPIMAGE_FV_THREADS", "3")
    assert cpu_share() == 3
    monkeypatch.delenv("NPIMAGE_FV_THREADS")
    assert 1 <= cpu_share() <= len(os.sched_getaffinity(0))


# --- engines -------------------------------------------------------------------------------


def _grocery_or_shipped_photos() -> list[Image.Image]:
    """A few real photos: grocery-store ones when present, else scikit-image's."""
    if ICONIC.is_dir():
        files = sorted(ICONIC.rglob("*_Iconic.jpg"))[::9][:8]
    else:
        files = [SKIMAGE_DATA / n for n in ("chelsea.png", "coffee.png", "rocket.jpg",
                                            "astronaut.png")]
    return [Image.open(f).convert("RGB") for f in files]


@pytest.mark.parametrize("engine", ["tflite-fp32", "tflite-fp16", "tflite-int8", "tflite-qs8",
                                    "tf-bf16"])
def test_engine_vectors_agree_with_the_saved_model(lite0, model_cache, engine):
    photos = _grocery_or_shipped_photos()
    lite = load_extractor("efficientnet-lite0", model_cache, engine=engine)
    if engine == "tf-bf16" and not tflite.bf16_supported():
        assert lite.engine == "tf-fp32"  # the fallback of CPUs without bfloat16
    else:
        assert lite.engine == engine and lite.dim == lite0.dim
    cos = (lite.embed(photos) * lite0.embed(photos)).sum(axis=1)
    # 8-bit activations (qs8) move vectors more: 0.97 at worst on 864 grocery photos
    assert cos.min() > (0.95 if engine == "tflite-qs8" else 0.99), cos
    if engine == "tflite-fp32":
        assert cos.min() > 0.9999  # same arithmetic, other kernels


def test_qs8_takes_uint8_pixels_and_ranks_like_the_saved_model(lite0, model_cache):
    """Full-integer engine: uint8 pixels go in unconverted, float [0, 1] are quantised to
    the same, and each photo's nearest other photo is the one tf-fp32 finds."""
    qs8 = load_extractor("efficientnet-lite0", model_cache, engine="tflite-qs8")
    run = qs8._run_model
    assert run.takes_uint8
    pixels = np.stack([fit_square(p, qs8.input_size) for p in _grocery_or_shipped_photos()])
    np.testing.assert_array_equal(run(pixels), run(pixels.astype(np.float32) / 255.0))
    photos = _grocery_or_shipped_photos()
    a, b = qs8.embed(photos), lite0.embed(photos)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -1)
    np.fill_diagonal(sb, -1)
    assert (sa.argmax(axis=1) == sb.argmax(axis=1)).mean() >= 0.75


def test_one_process_converts_at_a_time(tmp_path):
    """A second loader waits for the first one's conversion (then opens its file)."""
    import threading

    entered = threading.Event()

    def second() -> None:
        with tflite.converting(tmp_path, "k", "tflite-qs8"):
            entered.set()

    with tflite.converting(tmp_path, "k", "tflite-qs8"):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not entered.wait(0.3)  # held by the first
    waiter.join(5)
    assert entered.is_set()
    with tflite.converting(tmp_path / "none", "k", "tf-bf16"):  # TensorFlow engines: no lock
        assert not (tmp_path / "none").exists()


def test_calibration_pictures_are_fixed_and_photo_like():
    one, two = tflite.calibration(64, 6), tflite.calibration(64, 6)
    np.testing.assert_array_equal(one, two)  # the same model from every conversion
    assert one.shape == (6, 64, 64, 3) and one.dtype == np.uint8
    assert not np.array_equal(one[0], one[1])
    assert one.min() < 40 and one.max() > 215  # dark marks, white grounds: the full range


def test_model_id_names_the_engine(lite0, lite0_tflite, model_cache):
    tf_id, lite_id = lite0.model_id, lite0_tflite.model_id
    assert tf_id != lite_id
    assert tf_id.endswith("-tf-fp32-pad224") and lite_id.endswith("-tflite-fp32-pad224")
    assert tf_id.startswith(model_id_prefix("efficientnet-lite0", model_cache, "tf-fp32"))
    assert lite_id.startswith(model_id_prefix("efficientnet-lite0", model_cache, "tflite-fp32"))
    assert not lite_id.startswith(model_id_prefix("efficientnet-lite0", model_cache, "tf-fp32"))
    assert not tf_id.startswith(model_id_prefix("efficientnet-lite0", model_cache, "tflite-fp32"))
    assert not lite_id.startswith(model_id_prefix("efficientnet-lite0", model_cache,
                                                  "tflite-fp16"))


def test_tflite_is_cached_and_loaded_without_the_saved_model(lite0_tflite, model_cache,
                                                             monkeypatch):
    from npimage.fv import models

    key = cache_key("efficientnet-lite0", lite0_tflite.model_id.split("@")[1].split("-")[0])
    model_file, facts_file, _ = tflite.paths(model_cache, key, "tflite-fp32")
    assert model_file.stat().st_size > 10_000_000 and facts_file.exists()
    monkeypatch.setattr(models, "_LOADED", {})
    monkeypatch.setattr("tensorflow_hub.load", lambda *a, **k: pytest.fail("hub.load called"))
    again = load("efficientnet-lite0", model_cache, engine="tflite-fp32")
    assert again is not lite0_tflite and again.model_id == lite0_tflite.model_id
    photos = _grocery_or_shipped_photos()[:2]
    np.testing.assert_allclose(again.embed(photos), lite0_tflite.embed(photos), atol=1e-6)


_WORKER = """
import json, sys
import numpy as np
from pathlib import Path
from PIL import Image
from npimage.fv import load_extractor
cache, out = Path(sys.argv[1]), Path(sys.argv[2])
ex = load_extractor("efficientnet-lite0", cache, engine=sys.argv[3])
photos = [Image.open(p).convert("RGB") for p in sorted(out.glob("*.png"))]
np.save(out / "vectors.npy", ex.embed(photos))
print(json.dumps({"model_id": ex.model_id, "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.parametrize("engine", ["tflite-fp32", "tflite-qs8"])
def test_converted_model_runs_without_importing_tensorflow(lite0, model_cache, tmp_path,
                                                           monkeypatch, engine):
    """A process that finds the converted file (a worker of `npimage run`) runs it through
    TF Lite's interpreter loaded on its own: TensorFlow is never imported there (2.7 CPU s
    and ~0.5 GB a worker), and the vectors are those of `tf.lite.Interpreter`, bit for bit,
    under the same model id."""
    import json
    import subprocess

    converted = load_extractor("efficientnet-lite0", model_cache, engine=engine)
    photos = _grocery_or_shipped_photos()[:4]
    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"),
                                                         os.environ.get("PYTHONPATH", "")])}
    env.pop("NPIMAGE_TFLITE_RUNTIME", None)
    done = subprocess.run([sys.executable, "-c", _WORKER, str(model_cache), str(tmp_path),
                           engine], capture_output=True, text=True, env=env, check=True)
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said == {"model_id": converted.model_id, "tensorflow": False}
    key = cache_key("efficientnet-lite0", converted.model_id.split("@")[1].split("-")[0])
    monkeypatch.setattr(tflite, "lite_runtime", lambda: None)  # tf.lite.Interpreter
    reference = tflite.LiteModel(tflite.paths(model_cache, key, engine)[0], 1)
    assert isinstance(reference._it, __import__("tensorflow").lite.Interpreter)
    want = HubExtractor(reference, converted.model_id, reference.size).embed(
        [Image.open(tmp_path / f"{i}.png") for i in range(len(photos))])
    np.testing.assert_array_equal(np.load(tmp_path / "vectors.npy"), want)


def test_tf_lite_runtime_can_be_turned_off(monkeypatch):
    """NPIMAGE_TFLITE_RUNTIME=tf: no standalone interpreter (tf.lite.Interpreter instead)."""
    monkeypatch.setenv("NPIMAGE_TFLITE_RUNTIME", "tf")
    tflite.lite_runtime.cache_clear()
    try:
        assert tflite.lite_runtime() is None
    finally:
        tflite.lite_runtime.cache_clear()
    monkeypatch.delenv("NPIMAGE_TFLITE_RUNTIME")
    assert tflite.lite_runtime() is not None  # TensorFlow 2.21's wheel has it


def test_engine_setting(monkeypatch):
    monkeypatch.setenv("NPIMAGE_FV_ENGINE", "TF")
    assert tflite.engine_setting() == "tf-fp32"  # an alias
    assert tflite.engine_setting("tflite-fp16") == "tflite-fp16"
    monkeypatch.delenv("NPIMAGE_FV_ENGINE")
    auto = "tf-bf16" if tflite.bf16_supported() else "tflite-fp32"
    auto = "tflite-qs8" if tflite.vnni_supported() else auto
    assert tflite.engine_setting() == tflite.engine_setting("auto") == auto
    for flags, want in ((["avx2", "avx512_vnni", "avx512_bf16"], "tflite-qs8"),
                        (["avx2", "avx_vnni"], "tflite-qs8"),
                        (["avx2", "avx512_bf16"], "tf-bf16"), (["avx2"], "tflite-fp32"),
                        ([], "tflite-fp32")):
        monkeypatch.setattr(tflite, "cpu_flags", lambda flags=flags: flags)
        assert tflite.engine_setting("auto") == want, flags
    with pytest.raises(ValueError, match="unknown FV engine"):
        tflite.engine_setting("onnx")


def _save_unconvertible_model(folder: Path) -> None:
    """A SavedModel TF Lite cannot convert: a string op (tf.strings) inside the call."""
    import tensorflow as tf

    class Odd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images):
            means = tf.reduce_mean(images, axis=[1, 2])
            text = tf.strings.as_string(means)
            lengths = tf.cast(tf.strings.length(text), tf.float32)
            return tf.concat([means, lengths * 0.0 + 1.0], axis=1)

    tf.saved_model.save(Odd(), str(folder))


def test_a_model_that_does_not_convert_falls_back_to_tf(tmp_path, caplog):
    folder, cache = tmp_path / "odd", tmp_path / "cache"
    _save_unconvertible_model(folder)
    extractor = load(str(folder), cache, engine="tflite-fp32")
    assert extractor.engine == "tf-fp32"
    assert extractor.model_id.endswith("-tf-fp32-pad32")
    assert "running it through TensorFlow" in caplog.text
    assert extractor.embed([Image.new("RGB", (32, 32), (0, 255, 0))]).shape == (1, 6)
    key = cache_key(str(folder), extractor.model_id.split("@")[1].split("-")[0])
    assert tflite.failed(cache, key, "tflite-fp32")  # recorded: not tried again
    assert model_id_prefix(str(folder), cache, "tflite-fp32") == model_id_prefix(
        str(folder), cache, "tf-fp32")
    assert extractor.model_id.startswith(model_id_prefix(str(folder), cache, "tflite-fp32"))


def test_bfloat16_stays_with_its_own_extractor(lite0, model_cache):
    """tf-bf16 sets a process-wide TensorFlow option only around its first call."""
    if not tflite.bf16_supported():
        pytest.skip("this CPU has no bfloat16 (avx512_bf16 / amx_bf16)")
    photos = _grocery_or_shipped_photos()
    before = lite0.embed(photos)
    bf16 = load_extractor("efficientnet-lite0", model_cache, engine="tf-bf16")
    assert bf16.model_id.endswith("-tf-bf16-pad224")
    low = bf16.embed(photos)
    assert 0.99 < (low * before).sum(axis=1).min() < 0.99999  # bfloat16: close, not equal
    fresh = HubExtractor(models._tf_runner(models.features_fn(lite0._obj), 224), "x", 224)
    np.testing.assert_allclose(fresh.embed(photos), before, atol=1e-5)  # float32 again
