"""No hidden global state: importing or running npimage leaves process-wide settings alone,
and a worker takes its sizes from the run context, not from its own environment."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from PIL import Image

from npimage.config import Settings
from npimage.ingest.decode import ImageError, decode
from npimage.pipeline import settings_context
from npimage.storage.runs import RunContext


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_importing_decode_leaves_pillows_pixel_limit_alone():
    """Was: decode.py set Image.MAX_IMAGE_PIXELS = None for the whole process on import."""
    code = ("import sys; sys.path.insert(0, {!r}); from PIL import Image; "
            "before = Image.MAX_IMAGE_PIXELS; import npimage.ingest.decode, npimage.pipeline; "
            "print(before == Image.MAX_IMAGE_PIXELS, before)").format(str(ROOT / "plugins"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split()[0] == "True", out.stdout


def test_decode_applies_its_own_pixel_limit_per_call(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # someone else's strict setting
    img = decode(_png(100, 100), max_pixels=250_000_000)  # 10 000 px: fine for npimage
    assert (img.width, img.height) == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored after the call
    with pytest.raises(ImageError, match="image too large"):
        decode(_png(100, 100), max_pixels=5000)
    with pytest.raises(ImageError, match="image too large"):
        decode(_png(100, 80), max_pixels=7999)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_tf_hub_cache_folder_is_set_for_one_load_only(tmp_path, monkeypatch):
    """Was: fv/models.py wrote TFHUB_CACHE_DIR into os.environ for good."""
    from npimage.fv import models

    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    with models._hub_cache(tmp_path):
        assert os.environ["TFHUB_CACHE_DIR"] == str(tmp_path / "tfhub")
    assert "TFHUB_CACHE_DIR" not in os.environ
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/elsewhere")
    with models._hub_cache(tmp_path):
        assert os.environ["TFHUB_CACHE_DIR"] == "/elsewhere"  # the user's choice wins


def test_worker_sizes_come_from_the_context_not_the_environment(tmp_path, monkeypatch):
    """Was: batch, shard and block sizes were read from the environment again per worker."""
    for name, value in (("BATCH_SIZE", "17"), ("SHARD_SIZE", "333"), ("BLOCK_SIZE", "64"),
                        ("MAX_PIXELS", "12345"), ("READ_TIMEOUT", "7.5")):
        monkeypatch.setenv(f"NPIMAGE_{name}", value)
    ctx = settings_context("c", str(tmp_path), "r", Settings().with_overrides(data_dir=tmp_path))
    for name in ("BATCH_SIZE", "SHARD_SIZE", "BLOCK_SIZE", "MAX_PIXELS", "READ_TIMEOUT"):
        monkeypatch.setenv(f"NPIMAGE_{name}", "999")  # a worker with another environment
    worker = RunContext.from_dict(ctx.to_dict()).settings  # as the DAG's XCom carries it
    assert (worker.batch_size, worker.shard_size, worker.block_size, worker.max_pixels,
            worker.read_timeout) == (17, 333, 64, 12345, 7.5)
