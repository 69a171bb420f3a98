"""read_image: every supported format and pixel type becomes RGB uint8; bad files raise clearly."""
import cv2
import numpy as np
import pytest

from trainer.io.imageio import IMAGE_SUFFIXES, as_rgb_uint8, content_hash, read_image
from trainer.util.errors import ImageReadError


@pytest.fixture
def rgb():
    """A 24x32 RGB image with distinct channels (R ramps along x, G along y, B constant)."""
    x = np.linspace(0, 255, 32, dtype=np.float64)
    y = np.linspace(0, 255, 24, dtype=np.float64)
    img = np.zeros((24, 32, 3), np.uint8)
    img[..., 0] = np.round(x)[None, :]
    img[..., 1] = np.round(y)[:, None]
    img[..., 2] = 40
    return img


def _write(path, rgb_or_gray):
    """Write with OpenCV, which expects BGR order."""
    a = rgb_or_gray
    if a.ndim == 3 and a.shape[2] == 3:
        a = a[..., ::-1]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., [2, 1, 0, 3]]
    assert cv2.imwrite(str(path), np.ascontiguousarray(a))
    return path


@pytest.mark.parametrize("suffix", [".bmp", ".png", ".tif", ".tiff"])
def test_lossless_formats_round_trip_in_rgb_order(tmp_path, rgb, suffix):
    out = read_image(_write(tmp_path / f"img{suffix}", rgb))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_close_to_original(tmp_path, rgb):
    out = read_image(_write(tmp_path / "img.JPG", rgb))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    # lossy, but channels must not be swapped: R ramps along x, B stays near 40
    assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 6
    assert abs(out[..., 2].mean() - 40) < 8


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_scaled_to_8_bit(tmp_path, suffix):
    img16 = np.zeros((8, 10, 3), np.uint16)
    img16[..., 0] = 65535
    img16[..., 1] = 257 * 100
    img16[..., 2] = 1000
    out = read_image(_write(tmp_path / f"deep{suffix}", img16))
    assert out.dtype == np.uint8
    assert (out[..., 0] == 255).all() and (out[..., 1] == 100).all() and (out[..., 2] == 4).all()


def test_16_bit_gray(tmp_path):
    g = np.tile(np.array([0, 257 * 50, 65535], np.uint16), (4, 1))
    out = read_image(_write(tmp_path / "g16.png", g))
    assert out.shape == (4, 3, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 50, 255])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_gray_8_bit_becomes_three_equal_channels(tmp_path, rgb):
    g = rgb[..., 0]
    out = read_image(_write(tmp_path / "g.bmp", g))
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_rgba_composited_over_black(tmp_path, rgb):
    alpha = np.full((24, 32), 255, np.uint8)
    alpha[:, :8] = 0        # transparent strip
    alpha[:, 8:16] = 128    # half transparent
    out = read_image(_write(tmp_path / "a.png", np.dstack([rgb, alpha])))
    assert out.shape == (24, 32, 3)
    assert (out[:, :8] == 0).all()
    np.testing.assert_array_equal(out[:, 16:], rgb[:, 16:])
    half = rgb[:, 8:16].astype(int) * 128 / 255
    assert np.abs(out[:, 8:16] - half).max() <= 1


def test_float_array_and_gray_alpha_in_memory():
    f = np.full((4, 4), 0.5, np.float32)
    assert (as_rgb_uint8(f) == 128).all()
    la = np.dstack([np.full((4, 4), 200, np.uint8), np.full((4, 4), 255, np.uint8)])
    assert (as_rgb_uint8(la) == 200).all()
    with pytest.raises(ImageReadError):
        as_rgb_uint8(np.zeros((4, 4, 5), np.uint8))


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="nothere.png.*not found"):
        read_image(tmp_path / "nothere.png")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.bmp"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.bmp.*empty"):
        read_image(p)


def test_text_file_named_bmp(tmp_path):
    p = tmp_path / "notes.bmp"
    p.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="notes.bmp.*not a readable image"):
        read_image(p)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_truncated_files_refused(tmp_path, rgb, suffix):
    good = _write(tmp_path / f"good{suffix}", rgb).read_bytes()
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageReadError, match=f"cut{suffix}"):
        read_image(p)


def test_folder_refused(tmp_path):
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_suffixes_cover_formats():
    assert {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"} <= set(IMAGE_SUFFIXES)


def test_content_hash(tmp_path, rgb):
    a = _write(tmp_path / "a.png", rgb)
    b = tmp_path / "copy_elsewhere.png"
    b.write_bytes(a.read_bytes())
    assert content_hash(a) == content_hash(b)          # same bytes, other name
    assert len(content_hash(a)) == 64
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert content_hash(_write(tmp_path / "c.png", changed)) != content_hash(a)
    assert content_hash(rgb) == content_hash(rgb.copy())
    assert content_hash(rgb) != content_hash(changed)
    assert content_hash(rgb) != content_hash(rgb.reshape(32, 24, 3))  # shape matters
    with pytest.raises(ImageReadError):
        content_hash(tmp_path / "missing.png")
