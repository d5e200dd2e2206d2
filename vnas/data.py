"""CIFAR-10: finding it, checking it, splitting it, and batching it with augmentation on the device.

Sources, in order (DESIGN section 4): ``VNAS_DATA`` (a folder or an ``.npz``); ``data/cifar10.npz``
or ``data/cifar-10-batches-py/``; a torchvision download when allowed (``download=True`` or
``VNAS_DOWNLOAD=1``); the bundled ``data/cifar10_tiny.npz``. Smoke mode always uses the tiny subset.
``shift`` makes corrupted copies of test images (CIFAR-10-C style), introduced in chapters/05_bayesian_weights.py.
Introduced in chapters/00_welcome.py.
"""

from __future__ import annotations

import difflib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vnas import config

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Published per-channel statistics of the official training set: every network's first module
# (vnas.ops.Normalise) normalises with them, and cutout fills its holes with the mean pixel.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
TINY = config.DATA_DIR / "cifar10_tiny.npz"
KEYS = ("x_train", "y_train", "x_test", "y_test")

HOW_TO_GET = (
    "To get CIFAR-10: set VNAS_DOWNLOAD=1 (torchvision downloads it into data/), or put the official "
    "cifar-10-batches-py folder or an .npz with x_train/y_train/x_test/y_test into data/, or point "
    "VNAS_DATA at either."
)


class DataError(ValueError):
    """A dataset that is missing or malformed; the message says how to fix it."""


@dataclass
class Cifar10:
    """Images as uint8 arrays (N, 32, 32, 3), labels as int64 (N,), and where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def is_tiny(self) -> bool:
        return len(self.x_train) < 5000

    def describe(self) -> str:
        note = " (tiny subset: enough to run the code, far too small for results)" if self.is_tiny else ""
        return f"{self.source}: {len(self.x_train)} train / {len(self.x_test)} test images{note}"


def _check_arrays(arrays: dict, where: str) -> dict:
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise DataError(f"{where} lacks {missing}; it needs arrays {list(KEYS)}. {HOW_TO_GET}")
    out = {}
    for split in ("train", "test"):
        x, y = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"]).reshape(-1)
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError(f"{where}: x_{split} has shape {x.shape}; expected (N, 32, 32, 3) images (NHWC).")
        if x.dtype != np.uint8:
            raise DataError(f"{where}: x_{split} has dtype {x.dtype}; expected uint8 pixels 0..255.")
        if len(y) != len(x):
            raise DataError(f"{where}: {len(x)} images but {len(y)} labels in y_{split}.")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{where}: y_{split} has dtype {y.dtype}; expected integer labels 0..9.")
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{where}: y_{split} has labels in [{y.min()}, {y.max()}]; CIFAR-10 labels are 0..9.")
        out[f"x_{split}"], out[f"y_{split}"] = x, y.astype(np.int64)
    return out


def read_npz(path: Path) -> dict:
    """Read and validate an .npz with x_train/y_train/x_test/y_test."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable .npz file ({err}). {HOW_TO_GET}") from err
    return _check_arrays(arrays, str(path))


def read_batches(folder: Path) -> dict:
    """Read the official ``cifar-10-batches-py`` layout (data_batch_1..5, test_batch) with plain pickle.

    torchvision's CIFAR10 class insists on the official MD5s; this reader only checks shapes and labels.
    """
    folder = Path(folder)

    def load(name):
        path = folder / name
        if not path.is_file():
            raise DataError(f"{folder} looks like cifar-10-batches-py but lacks {name}. {HOW_TO_GET}")
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"])

    parts = [load(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = load("test_batch")
    arrays = {"x_train": np.concatenate([p[0] for p in parts]), "y_train": np.concatenate([p[1] for p in parts]),
              "x_test": x_test, "y_test": y_test}
    return _check_arrays(arrays, str(folder))


def read_path(path: Path) -> dict:
    """An .npz file, a cifar-10-batches-py folder, or a folder that contains one of them."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist. {HOW_TO_GET}")
    if path.is_file():
        return read_npz(path)
    if (path / "data_batch_1").exists():
        return read_batches(path)
    if (path / "cifar-10-batches-py").is_dir():
        return read_batches(path / "cifar-10-batches-py")
    if (path / "cifar10.npz").is_file():
        return read_npz(path / "cifar10.npz")
    raise DataError(f"{path} holds neither cifar-10-batches-py nor cifar10.npz. {HOW_TO_GET}")


def _download(root: Path) -> Path:
    import torchvision

    torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
    return root / "cifar-10-batches-py"


def load_cifar10(download: bool | None = None, tiny: bool | None = None) -> Cifar10:
    """The first CIFAR-10 source found (see the module docstring); ``.source`` says which.

    ``tiny=True`` forces the bundled subset (the default in smoke mode).
    Introduced in chapters/00_welcome.py.
    """
    tiny = config.mode() == "smoke" if tiny is None else tiny
    download = config.download_allowed() if download is None else download
    override = config.data_override()
    if override is not None and not tiny:
        if not override.exists():
            raise DataError(f"VNAS_DATA={override} does not exist. Fix the path or unset VNAS_DATA. {HOW_TO_GET}")
        return Cifar10(**read_path(override), source=f"VNAS_DATA ({override})")
    candidates = [] if tiny else [config.DATA_DIR / "cifar10.npz", config.DATA_DIR / "cifar-10-batches-py"]
    for path in candidates:
        if path.exists():
            where = path.relative_to(config.ROOT) if path.is_relative_to(config.ROOT) else path
            return Cifar10(**read_path(path), source=str(where))
    if download and not tiny:
        return Cifar10(**read_batches(_download(config.DATA_DIR)), source="torchvision download (data/)")
    if not TINY.is_file():
        raise DataError(f"The bundled subset {TINY} is missing (restore it with git). {HOW_TO_GET}")
    return Cifar10(**read_npz(TINY), source="bundled tiny subset (data/cifar10_tiny.npz)")


# --- splits ---------------------------------------------------------------------------------------

def stratified_split(y: np.ndarray, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two disjoint halves with the same class balance (DARTS: search-train / search-val).

    Introduced in chapters/00_welcome.py.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must lie strictly between 0 and 1.")
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(fraction * len(idx)))
        first.append(idx[:cut])
        second.append(idx[cut:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def per_class_subset(y: np.ndarray, n_per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n_per_class`` images of every class (sorted), chosen at random with ``seed``."""
    counts = np.bincount(y, minlength=10)
    if n_per_class > counts.min():
        raise ValueError(f"Asked for {n_per_class} images per class but the smallest class has {counts.min()}.")
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), n_per_class, replace=False)
                                   for c in np.unique(y)]))


def downsample(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC images averaged down to ``size`` x ``size`` pixels (box filter; ``size`` must divide the
    side), rounded back to uint8: the 16 x 16 images of NB201's ImageNet16 protocol, used by the quick
    search proxy. Introduced in chapters/04_bayesian_structure_posterior.py."""
    side = x.shape[1]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or side % size:
        raise ValueError(f"image_size={size!r} must be a positive divisor of the images' side ({side}), "
                         f"e.g. 32, 16 or 8.")
    if size == side:
        return x
    f = side // size
    blocks = x.reshape(len(x), size, f, size, f, x.shape[3]).astype(np.float32)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


# --- batches on the device --------------------------------------------------------------------------

def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip of a uint8 NHWC batch, as one batched gather.

    Introduced in chapters/00_welcome.py.
    """
    n, h, w, _ = x.shape
    dev = x.device
    x = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=dev, generator=generator)
    rows = dy + torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    if flip:  # a flip is a reversed column index, so crop and flip are one gather
        flipped = torch.rand(n, 1, 1, device=dev, generator=generator) < 0.5
        cols = torch.where(flipped, w - 1 - cols, cols)
    return x[torch.arange(n, device=dev).view(n, 1, 1), rows, dx + cols]


def cutout_mask(n: int, h: int, w: int, size: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """A (n, 1, h, w) boolean mask, True inside one size x size square per image, centred anywhere
    (clipped at the border), as in DeVries & Taylor (2017). ``Batches`` fills the holes with the mean
    pixel, so that after the network's normalisation they are 0, as in the original (which cuts after
    normalising). Introduced in chapters/00_welcome.py.
    """
    cy = torch.randint(0, h, (n, 1, 1), device=device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=device, generator=generator)
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    hole = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return hole.unsqueeze(1)


class Batches:
    """Shuffled, augmented batches of pixels from images that live on the device as one uint8 tensor.

    ``set_epoch(k)`` reseeds from (seed, k) so a resumed run sees the same batches as an uninterrupted one.
    Yields ``(x, y)``: x float32 NCHW pixels in [0, 1] (channels_last memory when asked), y int64. Models
    normalise inside (their first module), so that attacks and calibration work on pixels.
    Introduced in chapters/00_welcome.py.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, device=None, train: bool = True,
                 cutout: int = 0, seed: int = 0, drop_last: bool | None = None, channels_last: bool = False):
        if len(x) == 0:
            raise ValueError("No images to batch.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        self.device = torch.device(device) if device is not None else config.device()
        self.x = torch.as_tensor(x, device=self.device)
        self.y = torch.as_tensor(y, device=self.device, dtype=torch.long)
        self.batch_size, self.train, self.cutout, self.seed = batch_size, train, cutout, seed
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.mean_pixel = torch.tensor(MEAN, device=self.device).view(1, 3, 1, 1)
        self.generator = torch.Generator(device=self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def to_pixels(self, x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> float32 NCHW in [0, 1], in the memory layout the models use."""
        x = x_uint8_nhwc.permute(0, 3, 1, 2).float() / 255
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def __iter__(self):
        n = len(self.x)
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.train
                 else torch.arange(n, device=self.device))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.x[idx]
            if self.train:
                # the padding scales with the image: 4 pixels of 32 (DARTS), 2 of 16
                x = self.to_pixels(crop_flip(x, self.generator, pad=max(1, x.shape[1] // 8)))
                if self.cutout:
                    hole = cutout_mask(len(x), x.shape[2], x.shape[3], self.cutout, self.generator, self.device)
                    x = torch.where(hole, self.mean_pixel, x)
            else:
                x = self.to_pixels(x)
            yield x, self.y[idx]


# --- shifted inputs ---------------------------------------------------------------------------------

# Corruptions in the style of CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
# Common Corruptions and Perturbations", ICLR 2019), one parameter per severity 1..5. noise, blur and contrast
# use CIFAR-10-C's own values (its gaussian_noise, gaussian_blur and contrast); jpeg does not (see `shift`).
SHIFT_PARAMS = {
    "noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std of additive Gaussian noise, pixels in [0, 1]
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma of the Gaussian blur, in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor c in (x - mean) * c + mean
    "jpeg": (40, 25, 15, 10, 5),  # JPEG quality (CIFAR-10-C: 80, 65, 58, 50, 40)
}
SHIFTS = tuple(SHIFT_PARAMS)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Float NCHW images blurred by a separable Gaussian (radius 4 sigma, as scipy/skimage), reflect padding."""
    radius = max(1, int(4 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = x.shape[1]
    x = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along rows
    return torch.nn.functional.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along columns


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 NHWC images through a JPEG encode/decode at ``quality`` (torchvision.io, on the CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    chw = list(x.cpu().permute(0, 3, 1, 2).contiguous())
    mode = ImageReadMode.RGB if x.shape[3] == 3 else ImageReadMode.GRAY
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs (for TorchCodec); they still work
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        out = torch.stack([decode_jpeg(encode_jpeg(img, quality=quality), mode=mode) for img in chw])
    return out.permute(0, 2, 3, 1).to(x.device)


def shift(x, kind: str, severity: int, seed: int = 0):
    """A corrupted copy of a batch of images: the shifted test inputs of calibration under distribution shift.

    ``x``: uint8 images (N, H, W, C), pixels 0..255, as ``Cifar10`` stores them: a numpy array or a torch
    tensor (any device); the result has the same type, dtype, shape and device. ``kind`` is one of ``SHIFTS``,
    ``severity`` 1..5; the parameters are in ``SHIFT_PARAMS``. On pixels x in [0, 1]:
    - "noise": clip(x + σ ε, 0, 1), ε ~ N(0, 1) drawn from ``seed``;
    - "blur": x convolved with a Gaussian of std σ pixels (separable, reflect padding);
    - "contrast": (x − m) c + m, m the mean of each image and channel (as CIFAR-10-C);
    - "jpeg": an encode/decode at quality q. CIFAR-10-C uses q = 80..40, but the CIFAR-10 copy shipped here
      is already JPEG quality 75 (data/README.md), so qualities at or above 75 would barely change it; ours,
      40..5, lie well below it.
    The result is rounded back to uint8; it is deterministic given ``seed`` (only "noise" draws).
    Introduced in chapters/05_bayesian_weights.py.
    """
    if kind not in SHIFT_PARAMS:
        close = difflib.get_close_matches(str(kind), SHIFTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown shift {kind!r}.{hint} Valid shifts: {', '.join(SHIFTS)}.")
    if not isinstance(severity, int) or isinstance(severity, bool) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer 1..5 (as in CIFAR-10-C), got {severity!r}.")
    is_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(x) if is_numpy else x
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 4 or t.shape[3] not in (1, 3):
        raise ValueError(f"x must be a batch of uint8 images (N, H, W, C) with C = 1 or 3, as a numpy array or "
                         f"torch tensor (e.g. Cifar10.x_test[:100]); got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}.")
    p = SHIFT_PARAMS[kind][severity - 1]
    if kind == "jpeg":
        out = _jpeg(t, p)
    else:
        pixels = t.permute(0, 3, 1, 2).float() / 255  # NCHW in [0, 1]
        if kind == "noise":
            eps = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(seed)).to(pixels.device)
            pixels = pixels + p * eps
        elif kind == "blur":
            pixels = _gaussian_blur(pixels, p)
        else:  # contrast
            mean = pixels.mean(dim=(2, 3), keepdim=True)
            pixels = (pixels - mean) * p + mean
        out = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return out.numpy() if is_numpy else out
