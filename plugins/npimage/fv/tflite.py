"""The TensorFlow Lite engine: a loaded FV model converted once into a .tflite file.

TensorFlow Lite (`tf.lite`, part of TensorFlow) runs a converted model with XNNPACK, its
CPU kernel library, on a fixed number of threads. EfficientNet-Lite was designed for it.
Engines (setting NPIMAGE_FV_ENGINE, default "auto": "tflite-qs8" where the CPU has VNNI,
else "tf-bf16" where it has bfloat16, else "tflite-fp32"; docs/FV.md "Engines"):

- "tf-fp32" (alias "tf"): the SavedModel called through TensorFlow, as `hub.load` gave it;
- "tf-bf16": the same with oneDNN's automatic bfloat16 mixed precision (Grappler's
  `auto_mixed_precision_onednn_bfloat16`): convolutions in bfloat16 on CPUs that have it
  (AVX512-BF16 or AMX); elsewhere it falls back to "tf-fp32";
- "tflite-fp32": the same graph converted to TF Lite, float32 weights;
- "tflite-fp16": weights stored as float16 (half the file; computed in float32);
- "tflite-int8": dynamic-range quantisation (int8 weights, activations quantised per call);
- "tflite-qs8": full-integer quantisation (int8 weights and activations, uint8 pixels in:
  XNNPACK's QS8 kernels, VNNI where the CPU has it), activation ranges calibrated on
  `calibration` pictures (synthetic, made here: no data set is needed or shipped).

The conversion takes the function that `hub.load` gave (any TF Hub or SavedModel model,
not only the default), fixes its input to [N, S, S, 3] float32, freezes its variables and
converts it. The result is checked against the SavedModel on fixed probe pictures: a
conversion that fails, or whose vectors agree to a cosine below MIN_COSINE, is recorded as
failed (a `.failed` file beside it) and the caller falls back to the "tf-fp32" engine. Files are
written atomically into `<model cache>/tflite/`, named by a key of the model (its weights
or graph digest) and the engine, so a process that finds them skips conversion and
`hub.load`.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from npimage.fv.quiet import lite_output, tensorflow

log = logging.getLogger(__name__)

ENGINES = ("tf-fp32", "tf-bf16", "tflite-fp32", "tflite-fp16", "tflite-int8", "tflite-qs8")
#: Other names accepted for an engine.
ALIASES = {"tf": "tf-fp32"}
#: CPU flags (/proc/cpuinfo) of a native bfloat16 dot product.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: CPU flags of an 8-bit integer dot product (VNNI), which XNNPACK's QS8 kernels use.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
#: "auto": "tflite-qs8" on a CPU with VNNI (measured: 1.9x less CPU per image than
#: "tflite-fp32", as little as "tf-bf16" or less, a quarter of its model load; recall@1
#: 0.961 against 0.963), else "tf-bf16" on a CPU with native bfloat16, else "tflite-fp32"
#: (docs/FV.md, "Speed"). Workers of one client must resolve it alike.
DEFAULT_ENGINE = "auto"
#: Bump when the conversion changes: the file names include it.
VERSION = 1
#: Least cosine between converted and SavedModel vectors on the probe pictures.
MIN_COSINE = 0.99
#: The same for "tflite-qs8": 8-bit activations move vectors more (least cosine 0.97 on
#: the grocery photos, 0.94 on the probe's stripes and ramps, outside the calibrated
#: ranges; recall@1 within half a point of tf-fp32, docs/FV.md "Speed"). Unrelated photos
#: have cosines around 0.6 (ReLU6 features), so a broken conversion still fails this.
MIN_COSINE_QS8 = 0.9
#: Pictures the "tflite-qs8" activation ranges are calibrated on (`calibration`).
CALIBRATION_PICTURES = 96
#: Pictures per interpreter call (XNNPACK is as fast at 1 as at 16; 1 needs no padding).
BATCH = 1


def engine_setting(engine: str | None = None) -> str:
    """The engine asked for: `engine`, else NPIMAGE_FV_ENGINE, else DEFAULT_ENGINE; "auto"
    resolved for this CPU."""
    name = (engine or os.environ.get("NPIMAGE_FV_ENGINE", "").strip() or DEFAULT_ENGINE).lower()
    name = ALIASES.get(name, name)
    if name == "auto":
        if vnni_supported():
            return "tflite-qs8"
        return "tf-bf16" if bf16_supported() else "tflite-fp32"
    if name not in ENGINES:
        raise ValueError(f"unknown FV engine {name!r}; use auto or one of {ENGINES}")
    return name


def is_tflite(engine: str) -> bool:
    """Whether the engine runs a TF Lite conversion (else TensorFlow on the SavedModel)."""
    return engine.startswith("tflite-")


def cpu_flags() -> list[str]:
    """This CPU's feature flags (/proc/cpuinfo; none where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return next((line.split(":", 1)[1].split() for line in text.splitlines()
                 if line.startswith("flags")), [])


def bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (else "tf-bf16" falls back to fp32)."""
    return any(f in cpu_flags() for f in BF16_FLAGS)


def vnni_supported() -> bool:
    """Whether this CPU has an 8-bit dot product (VNNI): where "auto" runs "tflite-qs8"."""
    return any(f in cpu_flags() for f in VNNI_FLAGS)


def paths(cache_dir: Path, key: str, engine: str) -> tuple[Path, Path, Path]:
    """(.tflite file, its .json facts, the .failed marker) of a model key and engine."""
    stem = Path(cache_dir) / "tflite" / f"{key}-{engine}-v{VERSION}"
    return stem.with_suffix(".tflite"), stem.with_suffix(".json"), stem.with_suffix(".failed")


@contextmanager
def converting(cache_dir: Path, key: str, engine: str) -> Iterator[None]:
    """Hold the model cache's lock of this key and engine (a no-op for "tf-*" engines).

    Workers of one run start together on a cold cache: one converts (15 CPU s for
    "tflite-qs8"), the others wait here and then open its file instead of converting it
    again on the same cores. An advisory `flock`, released when its holder ends.
    """
    if not is_tflite(engine):
        yield
        return
    lock = paths(cache_dir, key, engine)[0].with_suffix(".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock, "a")  # noqa: SIM115 - closed below
    except OSError:  # a read-only cache of converted models: nothing to convert into
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def failed(cache_dir: Path, key: str, engine: str) -> bool:
    """Whether converting this model for this engine failed before (then: engine "tf-fp32")."""
    return paths(cache_dir, key, engine)[2].exists()


def probe(size: int) -> np.ndarray:
    """Four fixed [0, 1] pictures (gradients, coloured blocks, stripes) to compare engines
    on: smooth regions and edges like photos, no pixel noise (which no photo has)."""
    rng = np.random.default_rng(15)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    grad = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, ::-1]), -1)
    blocks = np.kron(rng.random((6, 6, 3)), np.ones((size // 6 + 1, size // 6 + 1, 1)))
    stripes = 0.5 + 0.5 * np.sin(np.arange(size)[:, None, None] * [0.2, 0.05, 0.11]
                                 + np.arange(size)[None, :, None] * 0.07)
    return np.stack([grad, blocks[:size, :size], stripes,
                     1.0 - 0.5 * grad]).astype(np.float32)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # readable by every worker, like the SavedModel's files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def calibration(size: int, n: int = CALIBRATION_PICTURES, seed: int = 15) -> np.ndarray:
    """`n` product-photo-like uint8 pictures [n, size, size, 3] to calibrate "tflite-qs8".

    Deterministic and made here (no data set at conversion time, none shipped): mostly
    white backgrounds (some plain coloured) with filled boxes, ellipses, colour ramps and
    printed text, light sensor noise and blur - the value ranges and edges of catalogue
    photos. Measured against calibrating on real photos (grocery-store Fruit and
    Vegetables, scikit-image's photos): the same recall@1 within 0.3 points (docs/FV.md).
    """
    import cv2

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = 255 if i % 4 else rng.integers(0, 256, 3)
        for _ in range(int(rng.integers(2, 8))):
            _calibration_shape(img, rng, ramp)
        noisy = img + rng.normal(0.0, rng.random() * 12.0, img.shape)
        out[i] = cv2.GaussianBlur(np.clip(noisy, 0, 255).astype(np.uint8), (0, 0),
                                  0.3 + 1.5 * rng.random())
    return out


def _calibration_shape(img: np.ndarray, rng: np.random.Generator, ramp: np.ndarray) -> None:
    """Draw one random box, ellipse, text block or colour ramp into `img` (in place)."""
    import cv2

    size = img.shape[0]
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    x0, y0 = (int(v) for v in rng.integers(0, size, 2))
    w, h = (int(v) for v in rng.integers(size // 8, size * 2 // 3, 2))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), colour, -1)
    elif kind == 1:
        cv2.ellipse(img, (x0, y0), (w // 2, h // 2), float(rng.random() * 180), 0, 360,
                    colour, -1)
    elif kind == 2:
        for line in range(int(rng.integers(3, 12))):
            cv2.putText(img, "ABC123xyz"[: int(rng.integers(2, 9))], (x0, y0 + 14 * line),
                        int(rng.integers(0, 7)), float(0.3 + rng.random()), colour,
                        int(rng.integers(1, 3)))
    else:
        other = rng.integers(0, 256, 3)
        grad = (ramp * np.array(colour) + (1 - ramp) * other).astype(np.uint8)
        box = (slice(y0, y0 + h), slice(x0, x0 + w))
        img[box] = np.broadcast_to(grad, img.shape)[box]


def convert(fn: Any, trackable: Any, size: int, engine: str) -> bytes:
    """The .tflite bytes of `fn`: float32 [N, size, size, 3] in [0, 1] -> [N, D]
    ("tflite-qs8": uint8 pixels in, the quantisation of [0, 1] being 1/255)."""
    tf = tensorflow()

    spec = tf.TensorSpec([None, size, size, 3], tf.float32, name="images")
    concrete = tf.function(fn).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], trackable)
    if engine in ("tflite-fp16", "tflite-int8", "tflite-qs8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if engine == "tflite-fp16":
        converter.target_spec.supported_types = [tf.float16]
    if engine == "tflite-qs8":
        pictures = calibration(size).astype(np.float32) / np.float32(255.0)
        converter.representative_dataset = lambda: ([p[None]] for p in pictures)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    with lite_output():  # its flags, the quantiser's summary: not for the task log
        data: bytes = converter.convert()
    return data


#: TF Lite's compiled interpreter inside the TensorFlow wheel, by its module name there. It
#: links only TF Lite's own library (libpywrap_tflite_common.so), so it loads on its own:
#: a process that runs a converted model need not import TensorFlow (measured 2.7 CPU s
#: and ~0.5 GB per worker process, docs/FV.md "Speed").
WRAPPER_MODULE = "tensorflow.lite.python._pywrap_tensorflow_interpreter_wrapper"
#: tf.lite.Interpreter's op resolver id for OpResolverType.AUTO (= BUILTIN): the builtin
#: kernels with XNNPACK applied by default, what `tf.lite.Interpreter` uses.
BUILTIN_RESOLVER = 1


@functools.lru_cache(maxsize=1)
def lite_runtime() -> ModuleType | None:
    """TF Lite's interpreter module, loaded from the installed TensorFlow without importing
    TensorFlow; None where that cannot be done (then `LiteModel` uses `tf.lite`).

    Registered in sys.modules under its TensorFlow name, so a later `import tensorflow`
    in the same process (a conversion) finds it rather than initialising it twice.
    NPIMAGE_TFLITE_RUNTIME=tf forces `tf.lite.Interpreter` (the same compiled code).
    """
    if os.environ.get("NPIMAGE_TFLITE_RUNTIME", "").strip().lower() == "tf":
        return None
    if WRAPPER_MODULE in sys.modules:
        return sys.modules[WRAPPER_MODULE]
    try:
        found = importlib.util.find_spec("tensorflow")  # top level: TensorFlow not imported
        if found is None or not found.submodule_search_locations:
            return None
        name = WRAPPER_MODULE.rsplit(".", 1)[1]
        shared = Path(next(iter(found.submodule_search_locations))) / "lite" / "python"
        so = next(shared.glob(f"{name}*.so"))
        loader = importlib.machinery.ExtensionFileLoader(WRAPPER_MODULE, str(so))
        spec = importlib.util.spec_from_file_location(WRAPPER_MODULE, so, loader=loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        module.CreateWrapperFromBuffer  # noqa: B018 - the entry point used below
    except Exception as exc:  # another TensorFlow layout: the tf.lite path still works
        log.debug("TF Lite interpreter not loadable on its own: %s", exc)
        return None
    sys.modules[WRAPPER_MODULE] = module
    return module


class _Runtime:
    """The calls `LiteModel` makes of a `tf.lite.Interpreter`, on TF Lite's compiled
    interpreter (`lite_runtime`) with the arguments `tf.lite.Interpreter` passes it."""

    def __init__(self, module: ModuleType, content: bytes, threads: int) -> None:
        self._content = content  # the interpreter points into these bytes: keep them
        self._it = module.CreateWrapperFromBuffer(content, BUILTIN_RESOLVER, [], [], False,
                                                  False, int(threads), False)
        if not self._it:
            raise ValueError("TF Lite could not open the model")

    def _details(self, index: int) -> dict[str, Any]:
        """What `get_input_details` says of a tensor (the fields LiteModel reads)."""
        return {"index": int(index), "shape": self._it.TensorSize(index, 0),
                "shape_signature": self._it.TensorSizeSignature(index, 0),
                "dtype": self._it.TensorType(index, 0),
                "quantization": self._it.TensorQuantization(index, 0)}

    def get_input_details(self) -> list[dict[str, Any]]:
        return [self._details(i) for i in self._it.InputIndices()]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [self._details(i) for i in self._it.OutputIndices()]

    def resize_tensor_input(self, index: int, shape: Any) -> None:
        self._it.ResizeInputTensor(index, np.array(shape, np.int32), False)

    def allocate_tensors(self) -> None:
        self._it.AllocateTensors()

    def set_tensor(self, index: int, value: np.ndarray) -> None:
        self._it.SetTensor(index, value)

    def invoke(self) -> None:
        self._it.Invoke()

    def get_tensor(self, index: int) -> np.ndarray:
        return np.asarray(self._it.GetTensor(index, 0))


def interpreter(content: bytes, threads: int) -> Any:
    """A TF Lite interpreter of `content` on `threads` (XNNPACK): TF Lite's compiled
    interpreter loaded without TensorFlow where it can be (`lite_runtime`), else
    `tf.lite.Interpreter`. The same compiled code either way: the same vectors."""
    import warnings

    module = lite_runtime()
    if module is not None:
        return _Runtime(module, content, threads)
    tf = tensorflow()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter warns of its future move
        return tf.lite.Interpreter(model_content=content, num_threads=threads)


class LiteModel:
    """A TF Lite interpreter (XNNPACK, `threads`) running [N, S, S, 3] float32 -> [N, D]."""

    def __init__(self, model: Path | bytes, threads: int) -> None:
        content = model if isinstance(model, bytes) else Path(model).read_bytes()
        with lite_output():  # "Created ... XNNPACK delegate"
            self._it = interpreter(content, threads)
            self._in = self._it.get_input_details()[0]["index"]
            self._out = self._it.get_output_details()[0]["index"]
            self._it.resize_tensor_input(self._in, [BATCH, *self._it.get_input_details()[0]
                                                    ["shape_signature"][1:]])
            self._it.allocate_tensors()
        self._lock = threading.Lock()  # an interpreter runs one call at a time
        details = self._it.get_input_details()[0]
        self.size = int(details["shape"][1])
        scale, zero = details["quantization"]
        #: uint8 pixels go in as they are ("tflite-qs8": [0, 1] quantised with scale 1/255).
        self.takes_uint8 = bool(details["dtype"] == np.uint8 and zero == 0
                                and abs(scale * 255.0 - 1.0) < 1e-6)
        self._quantised = details["dtype"] != np.float32

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Float32 [N, D] of a batch [N, S, S, 3]: float32 in [0, 1], or uint8 pixels."""
        pixels = self._input(pixels)
        rows = []
        with self._lock:
            for start in range(0, len(pixels), BATCH):
                self._it.set_tensor(self._in, np.ascontiguousarray(pixels[start:start + BATCH]))
                self._it.invoke()
                rows.append(self._it.get_tensor(self._out).reshape(BATCH, -1).copy())
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(rows).astype(np.float32, copy=False)

    def _input(self, pixels: np.ndarray) -> np.ndarray:
        """`pixels` in the dtype the model takes (uint8 and float32 [0, 1] both accepted)."""
        if self.takes_uint8:
            if pixels.dtype == np.uint8:
                return pixels
            return np.clip(np.rint(pixels * np.float32(255.0)), 0, 255).astype(np.uint8)
        if self._quantised:
            raise ValueError("TF Lite model with a quantised input other than uint8 pixels")
        if pixels.dtype == np.uint8:
            return pixels.astype(np.float32) / np.float32(255.0)
        return pixels


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] arrays."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(na * nb, 1e-12))


def build(fn: Any, trackable: Any, size: int, engine: str, cache_dir: Path, key: str,
          threads: int) -> LiteModel:
    """Convert `fn`, check it against `fn` on the probe, cache it and return it to run.

    Raises RuntimeError (after writing the `.failed` marker) when the conversion fails or
    disagrees with the SavedModel, so that the caller falls back to the "tf-fp32" engine.
    """
    tf = tensorflow()

    model_file, facts_file, failed_file = paths(cache_dir, key, engine)
    pictures = probe(size)
    try:
        data = convert(fn, trackable, size, engine)
        lite = LiteModel(data, threads)
        want = np.asarray(fn(tf.constant(pictures)), np.float32).reshape(len(pictures), -1)
        got = lite(pictures)
        agreement = float(cosines(got, want).min()) if got.shape == want.shape else -1.0
        if not agreement >= (MIN_COSINE_QS8 if engine == "tflite-qs8" else MIN_COSINE):  # also NaN
            raise ValueError(f"vectors differ from the SavedModel's (cosine {agreement:.4f}, "
                             f"shapes {got.shape} vs {want.shape})")
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        _write_atomic(failed_file, json.dumps({"engine": engine, "reason": reason[:2000]},
                                              indent=2).encode() + b"\n")
        raise RuntimeError(f"cannot convert to {engine}: {reason}") from exc
    facts = {"engine": engine, "input_size": size, "dim": int(got.shape[1]),
             "probe_min_cosine": round(agreement, 6), "tensorflow": tf.__version__,
             "version": VERSION}
    _write_atomic(model_file, data)
    _write_atomic(facts_file, json.dumps(facts, indent=2).encode() + b"\n")
    return lite


def cached(cache_dir: Path, key: str, engine: str, threads: int) -> LiteModel | None:
    """The converted model of this key and engine from the cache, or None."""
    model_file, facts_file, _ = paths(cache_dir, key, engine)
    if not (model_file.exists() and facts_file.exists()):
        return None
    return LiteModel(model_file, threads)
