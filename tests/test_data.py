import numpy as np
import pytest
import torch

from vnas import data


def test_smoke_mode_uses_bundled_subset():
    d = data.load_cifar10()
    assert "tiny" in d.source and d.is_tiny
    assert d.x_train.shape == (1000, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert np.bincount(d.y_train, minlength=10).tolist() == [100] * 10


def _write_npz(path, **over):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_train=np.arange(20) % 10,
                  x_test=rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), y_test=np.arange(10) % 10)
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_vnas_data_npz_is_used_in_quick_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("VNAS_MODE", "quick")
    monkeypatch.setenv("VNAS_DATA", str(_write_npz(tmp_path / "c.npz")))
    d = data.load_cifar10()
    assert "VNAS_DATA" in d.source and len(d.x_train) == 20 and d.y_train.dtype == np.int64


def test_vnas_data_missing_path_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("VNAS_MODE", "quick")
    monkeypatch.setenv("VNAS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="does not exist.*VNAS_DOWNLOAD=1"):
        data.load_cifar10()


@pytest.mark.parametrize("over, message", [
    (dict(x_test=None), "lacks"),
    (dict(x_train=np.zeros((20, 32, 32), np.uint8)), "shape"),
    (dict(x_train=np.zeros((20, 3, 32, 32), np.uint8)), "NHWC"),
    (dict(x_train=np.zeros((20, 32, 32, 3), np.float32)), "dtype"),
    (dict(y_train=np.arange(20) % 11), "labels in"),
    (dict(y_train=np.arange(19) % 10), "labels in y_train"),
    (dict(y_test=np.linspace(0, 1, 10)), "integer labels"),
])
def test_malformed_npz_is_refused_clearly(tmp_path, over, message):
    path = _write_npz(tmp_path / "bad.npz", **over)
    before = path.read_bytes()
    with pytest.raises(data.DataError, match=message):
        data.read_path(path)
    assert path.read_bytes() == before  # nothing the user had is touched


def test_not_an_npz(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    with pytest.raises(data.DataError, match="not a readable"):
        data.read_npz(path)


def test_batches_folder_reader(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [1, 2, 3, 4]}, f)
    arrays = data.read_path(tmp_path)
    assert arrays["x_train"].shape == (20, 32, 32, 3)
    # channel-major rows become HWC: pixel (0, 0) of channel 1 is byte 1024 of the row
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)[b"data"]
    assert arrays["x_test"][0, 0, 0, 1] == raw[0, 1024]
    (folder / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match="lacks data_batch_3"):
        data.read_path(folder)


def test_stratified_split_and_subset():
    y = np.repeat(np.arange(10), 50)
    a, b = data.stratified_split(y, 0.5, seed=0)
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(y)
    assert np.bincount(y[a]).tolist() == [25] * 10
    assert np.array_equal(a, data.stratified_split(y, 0.5, seed=0)[0])
    assert not np.array_equal(a, data.stratified_split(y, 0.5, seed=1)[0])
    s = data.per_class_subset(y, 7, seed=0)
    assert np.bincount(y[s]).tolist() == [7] * 10
    with pytest.raises(ValueError, match="smallest class"):
        data.per_class_subset(y, 51)
    with pytest.raises(ValueError, match="between 0 and 1"):
        data.stratified_split(y, 1.0)


def test_crop_flip_is_a_shifted_window():
    x = torch.arange(2 * 32 * 32 * 3, dtype=torch.int64).view(2, 32, 32, 3) % 251 + 1
    gen = torch.Generator().manual_seed(0)
    out = data.crop_flip(x.to(torch.uint8), gen, pad=4, flip=True)
    padded = torch.nn.functional.pad(x.to(torch.uint8), (0, 0, 4, 4, 4, 4))
    for i in range(2):  # every output is some 32x32 window of the padded image, maybe mirrored
        windows = [padded[i, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(1)) for w in windows)


def test_cutout_mask_square_size():
    gen = torch.Generator().manual_seed(0)
    m = data.cutout_mask(500, 32, 32, 16, gen)
    holes = m.sum(dim=(1, 2, 3))
    assert m.dtype == torch.bool and m.shape == (500, 1, 32, 32)
    assert holes.max() == 256 and holes.min() >= 64  # a full 16x16 square, clipped at most to a corner
    rows, cols = m.any(3), m.any(2)  # a hole is one rectangle: its rows and columns are contiguous runs
    assert torch.equal(m, rows.unsqueeze(3) & cols.unsqueeze(2))


def test_batches_repeat_with_seed_and_epoch():
    d = data.load_cifar10()
    b1 = data.Batches(d.x_train, d.y_train, 64, device="cpu", cutout=16, seed=5)
    b2 = data.Batches(d.x_train, d.y_train, 64, device="cpu", cutout=16, seed=5)
    x1, y1 = next(iter(b1))
    x2, y2 = next(iter(b2))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (64, 3, 32, 32) and x1.dtype == torch.float32 and len(b1) == 1000 // 64
    b2.set_epoch(1)
    assert not torch.equal(next(iter(b2))[0], x1)
    b2.set_epoch(0)
    assert torch.equal(next(iter(b2))[0], x1)
    test = data.Batches(d.x_test, d.y_test, 64, device="cpu", train=False)
    assert len(test) == 8 and sum(len(y) for _, y in test) == 500  # evaluation keeps every image
    xt, _ = next(iter(test))
    raw = torch.as_tensor(d.x_test[:64]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(xt, raw)  # pixels in [0, 1]: the networks normalise inside


def test_cutout_holes_hold_the_mean_pixel_and_the_layout_is_kept():
    d = data.load_cifar10()
    b = data.Batches(d.x_train, d.y_train, 64, device="cpu", cutout=16, seed=2, channels_last=True)
    x, _ = next(iter(b))
    assert x.is_contiguous(memory_format=torch.channels_last) and 0 <= x.min() and x.max() <= 1
    mean = torch.tensor(data.MEAN).view(1, 3, 1, 1)
    in_hole = (x == mean).all(1)  # (n, h, w): every channel at the mean colour
    assert in_hole.flatten(1).sum(1).min() >= 64  # at least a quarter of each 16x16 square
    from vnas.ops import Normalise
    assert torch.all(Normalise()(x).permute(0, 2, 3, 1)[in_hole] == 0)  # holes are 0 after normalising


def test_download_only_when_allowed(tmp_path, monkeypatch):
    """With no local copy, quick mode falls back to the tiny subset unless a download is allowed."""
    monkeypatch.setenv("VNAS_MODE", "quick")
    monkeypatch.setattr(data.config, "DATA_DIR", tmp_path)
    monkeypatch.setattr(data, "TINY", data.TINY)  # the bundled subset stays where it is
    calls = []

    def fake_download(root):
        calls.append(root)
        folder = root / "cifar-10-batches-py"
        folder.mkdir()
        import pickle

        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            with open(folder / name, "wb") as f:
                pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
        return folder

    monkeypatch.setattr(data, "_download", fake_download)
    assert "tiny" in data.load_cifar10().source and not calls
    monkeypatch.setenv("VNAS_DOWNLOAD", "1")
    d = data.load_cifar10()
    assert calls == [tmp_path] and "torchvision download" in d.source and len(d.x_train) == 10
    assert "cifar-10-batches-py" in data.load_cifar10().source  # the next call finds the downloaded copy
