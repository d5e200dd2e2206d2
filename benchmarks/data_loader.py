"""Augmented CIFAR-10 batches per second: vnas.data.Batches (batched on the device) against the usual
per-image torchvision pipeline (RandomCrop(32, 4) + RandomHorizontalFlip + ToTensor + Normalize, and
cutout), measured side by side in one run. Target: >= 20,000 images/s on 2 CPU cores.

    python benchmarks/data_loader.py [--device cpu|cuda] [--seconds 3] [--batch 64]

Uses the real CIFAR-10 when vnas.data finds it (VNAS_DATA, data/cifar10.npz, ...; ../shared/data on our
machines), else the bundled subset; it prints which.
"""

import argparse
import os
import time

import numpy as np
import torch

from vnas import config, data


def rate(iterate, seconds: float) -> float:
    """Images per second of ``iterate()`` (a generator of batches), after one warm-up batch."""
    it = iterate()
    next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            x, _ = next(it)
        except StopIteration:
            it = iterate()
            continue
        n += len(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def torchvision_reference(x, y, batch, cutout):
    """The per-image pipeline most CIFAR code uses (a Dataset + transforms), batched by hand."""
    import torchvision.transforms as T
    from PIL import Image

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(data.MEAN, data.STD)])
    rng = np.random.default_rng(0)

    def gen():
        order = rng.permutation(len(x))
        for i in range(0, len(order) - batch + 1, batch):
            imgs = []
            for j in order[i:i + batch]:
                img = tf(Image.fromarray(x[j]))
                if cutout:
                    cy, cx = rng.integers(32, size=2)
                    img[:, max(cy - cutout // 2, 0):cy + cutout // 2, max(cx - cutout // 2, 0):cx + cutout // 2] = 0
                imgs.append(img)
            yield torch.stack(imgs), torch.as_tensor(y[order[i:i + batch]])
    return gen


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=str(config.device()))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    os.environ.setdefault("VNAS_MODE", "quick")
    d = data.load_cifar10()
    print(config.banner(d.describe()))
    print(f"torch threads: {torch.get_num_threads()}, device: {args.device}, batch {args.batch}")
    rows = []
    for cutout in (0, 16):
        ours = data.Batches(d.x_train, d.y_train, args.batch, device=args.device, cutout=cutout, seed=0)
        r_ours = rate(lambda ours=ours: iter(ours), args.seconds)
        r_ref = rate(torchvision_reference(d.x_train, d.y_train, args.batch, cutout), args.seconds)
        rows.append((cutout, r_ours, r_ref))
    print(f"\n{'cutout':>6} {'vnas Batches img/s':>20} {'torchvision per-image img/s':>28} {'ratio':>7}")
    for cutout, a, b in rows:
        print(f"{cutout:>6} {a:>20,.0f} {b:>28,.0f} {a / b:>7.1f}x")


if __name__ == "__main__":
    main()
