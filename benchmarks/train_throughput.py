"""Training throughput: fewshot's in-memory uint8 + tensor-augmentation pipeline vs ImageFolder + PIL.

Three rates for the same model, loss and optimiser, measured in one run:
  1. model-only: one pre-made batch on the device, forward + backward + step (the ceiling);
  2. fewshot pipeline: MPerClassSampler batch indices -> gather uint8 from the in-memory ImageSet
     (on the GPU when there is one) -> batched affine augmentation (affine_grid/grid_sample) -> step;
  3. the usual way: the same images written as JPEG files, torchvision ImageFolder + PIL transforms
     (RandomAffine, ToTensor, Normalize) + DataLoader with worker processes -> step.
Prints images/s of each and the ratios (pipeline / usual, pipeline / model-only).

With ``--recipe`` the encoder, its options, the image size, the batch size and the augmentation are the
recipe's (photos: random resized crop, flip and colour jitter, on tensors for fewshot and as the
torchvision transforms RandomResizedCrop + RandomHorizontalFlip + ColorJitter for the usual way).
With ``--folder`` the usual way reads the data set's own image files instead of re-written JPEGs.

  python benchmarks/train_throughput.py                              # Omniglot small1, Conv-4, 28x28
  python benchmarks/train_throughput.py --encoder resnet12 --image-size 84 --data glyphs --channels 3
  python benchmarks/train_throughput.py --recipe miniimagenet-conv4 --split base \
      --data miniimagenet:../shared/data/miniimagenet --folder ../shared/data/miniimagenet/train
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_metric_learning.samplers import MPerClassSampler

import episodes
from fewshot.device import PRECISIONS, autocast_dtype
from fewshot.models.encoders import build_encoder
from fewshot.models.losses import build_loss, build_miner
from fewshot.models.preprocess import Preprocess
from fewshot.training.augment import Augment
from fewshot.training.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = f"omniglot:{ROOT.parent / 'shared' / 'data' / 'omniglot' / 'images_background_small1.zip'}"


def make_step(model, device, amp):
    loss_fn, miner = build_loss("circle"), build_miner("multisimilarity")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step(x, y):
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            emb, logits = model(x)
        emb, logits = emb.float(), logits.float()
        loss = 0.1 * loss_fn(emb, y, miner(emb, y)) + F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def timed(fn, steps, warmup, device, batch):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def write_jpegs(data, root: Path) -> None:
    """The images of ``data`` as JPEG class folders under ``root`` (for ImageFolder)."""
    arr = data.images.permute(0, 2, 3, 1).numpy()
    for i in range(len(data)):
        folder = root / f"c{int(data.labels[i]):05d}"
        folder.mkdir(exist_ok=True)
        img = arr[i, :, :, 0] if data.channels == 1 else arr[i]
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=95)


def usual_transforms(aug: Augment, size: int) -> list:
    """The torchvision PIL transforms that do what ``aug`` does on tensors."""
    import torchvision.transforms as T
    out = []
    if aug.mode == "crop":
        out.append(T.RandomResizedCrop(size, scale=aug.scale, ratio=aug.ratio, antialias=True))
    else:
        out += [T.Resize((size, size), antialias=True)]
        if aug.mode == "affine":
            out.append(T.RandomAffine(aug.degrees, translate=(aug.translate, aug.translate), scale=aug.scale,
                                      shear=aug.shear or None))
    if aug.flip:
        out.append(T.RandomHorizontalFlip())
    if aug.brightness or aug.contrast or aug.saturation:
        out.append(T.ColorJitter(aug.brightness, aug.contrast, aug.saturation))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--split", default=None)
    p.add_argument("--encoder", default=None, help="default: the recipe's, else conv4")
    p.add_argument("--image-size", type=int, default=None, help="default: the recipe's, else 28")
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's, else 64")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (as fewshot train)")
    p.add_argument("--recipe", default=None,
                   help="take encoder, options, size, batch and augmentation from it")
    p.add_argument("--folder", default=None, help="class folders of the same images, for the usual way")
    a = p.parse_args()
    recipe = load_recipe(a.recipe) if a.recipe else {}
    a.encoder = a.encoder or recipe.get("encoder", "conv4")
    a.image_size = a.image_size or recipe.get("image_size", 28)
    a.batch_size = a.batch_size or recipe.get("batch_size", 64)
    aug_opts = recipe.get("augment", {"degrees": 10, "translate": 0.1, "scale": (0.9, 1.1)})
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    amp = autocast_dtype(a.precision, device) is not None
    data = episodes.load_data(a.data, a.split, image_size=a.image_size, channels=a.channels)
    print(f"data: {data.describe()}; encoder {a.encoder}; batch {a.batch_size}; device {device}"
          f"{' bf16' if amp else ' fp32'}; torch threads {torch.get_num_threads()}")

    torch.manual_seed(0)
    model = build_encoder(a.encoder, in_channels=data.channels, num_classes=data.num_classes,
                          image_size=a.image_size, **recipe.get("encoder_args", {})).to(device)
    model = model.to(memory_format=torch.channels_last)
    run_model = torch.compile(model) if a.compile else model
    step = make_step(run_model, device, amp)
    pre = Preprocess.fit(data.images)
    aug = Augment.from_dict(aug_opts)
    b = a.batch_size

    # 1. model only
    x0 = pre(data.images[:b]).to(device)
    y0 = data.labels[:b].to(device)
    model_only = timed(lambda: step(x0, y0), a.steps, a.warmup, device, b)

    # 2. fewshot pipeline
    images = data.images.to(device)
    labels = data.labels.to(device)
    sampler = MPerClassSampler(data.labels, 4, batch_size=b, length_before_new_iter=len(data))
    gen = torch.Generator(device=device).manual_seed(0)
    order = iter(())

    def ours():
        nonlocal order
        idx = next(order, None)
        if idx is None:
            order = iter(torch.as_tensor(list(iter(sampler))).view(-1, b))
            idx = next(order)
        idx = idx.to(device)
        x = pre.normalize(aug(pre.to_unit(images[idx]), gen))
        step(x, labels[idx])

    pipeline = timed(ours, a.steps, a.warmup, device, b)

    # 3. ImageFolder + PIL + DataLoader over the same images as JPEG files
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if a.folder is None:
            write_jpegs(data, Path(tmp))
        write_s = time.perf_counter() - t0
        mode = "L" if data.channels == 1 else "RGB"
        tf = T.Compose([T.Lambda(lambda im: im.convert(mode)), *usual_transforms(aug, a.image_size),
                        T.ToTensor(), T.Normalize(pre.mean, pre.std)])
        ds = ImageFolder(a.folder or tmp, transform=tf, loader=Image.open)
        loader = torch.utils.data.DataLoader(ds, batch_size=b, shuffle=True, num_workers=a.workers,
                                             drop_last=True, pin_memory=device.type == "cuda",
                                             persistent_workers=a.workers > 0)
        it = iter(loader)

        def usual():
            nonlocal it
            batch = next(it, None)
            if batch is None:
                it = iter(loader)
                batch = next(it)
            x, y = batch
            step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))

        folder_rate = timed(usual, a.steps, a.warmup, device, b)

    print(f"model only (ceiling):                 {model_only:10.0f} img/s")
    print(f"fewshot pipeline (uint8 + tensor aug): {pipeline:10.0f} img/s  "
          f"= {100 * pipeline / model_only:.1f}% of model-only")
    print(f"ImageFolder + PIL + DataLoader({a.workers}w):  {folder_rate:10.0f} img/s  "
          + (f"(JPEG files written in {write_s:.1f} s)" if a.folder is None else f"(reading {a.folder})"))
    print(f"ratio fewshot / ImageFolder: {pipeline / folder_rate:.2f}x")
    np.random.seed(0)


if __name__ == "__main__":
    main()
