"""Synthetic chest radiographs with known abnormality boxes: localisation with the answer known.

Each image is a 64 px grayscale frontal "chest film": a soft-tissue silhouette, two dark lung
fields crossed by faint ribs, a bright spine and mediastinum, a heart shadow, diaphragm domes
and clavicles, under per-image variation of anatomy size and position, exposure (gain, gamma),
blur and film noise. Findings, each with its own look and plausible place:

* Nodule        a small bright round spot (2-3 px radius) inside a lung field
* Cardiomegaly  an enlarged heart shadow (box: the heart)
* Effusion      a fluid level filling one lung base, flat upper edge (box: the fluid)
* Infiltration  a hazy mottled patch in a mid-lung zone (the NIH box file calls it "Infiltrate")

About a third of the images are `No Finding`; the rest carry one finding, some two. Each split
has `metadata.csv` (file_name, label with '|' between findings, as NIH's "Finding Labels") and
`BBox_List_2017.csv` in the NIH layout; a few images are written as DICOM instead of PNG (12-bit
values, a window, one MONOCHROME1). Deterministic by seed.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

FINDINGS = ("Cardiomegaly", "Effusion", "Infiltration", "Nodule")
NO_FINDING = "No Finding"
BOX_NAMES = {"Infiltration": "Infiltrate"}  # the NIH box file's spelling (docs/method.md §6)
NIH_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
SIZE = 64


def _ellipse(u, v, cx, cy, rx, ry):
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1.0


def _box_of(mask: np.ndarray, margin: int = 1) -> tuple[int, int, int, int]:
    """NIH-style (x, y, w, h) of a mask's bounding box, widened by `margin` px, inside the image."""
    ys, xs = np.nonzero(mask)
    x0, y0 = max(0, xs.min() - margin), max(0, ys.min() - margin)
    x1, y1 = min(mask.shape[1], xs.max() + 1 + margin), min(mask.shape[0], ys.max() + 1 + margin)
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def radiograph(rng: np.random.Generator, findings: tuple[str, ...], size: int = SIZE
               ) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    """One image (size x size float in [0, 1]) and the (x, y, w, h) box of each finding."""
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size
    j = lambda s: rng.normal(0.0, s)  # noqa: E731 - anatomical jitter
    img = np.full((size, size), 0.05)
    body = _ellipse(u, v, 0.5 + j(0.01), 0.58, 0.47 + j(0.015), 0.6)
    img[body] = 0.42 + j(0.03)  # soft tissue
    lung_w, lung_h, lung_y = 0.15 + j(0.01), 0.27 + j(0.015), 0.45 + j(0.015)
    lungs = []
    for side in (-1, 1):
        cx = 0.5 + side * (0.19 + j(0.01))
        m = _ellipse(u, v, cx, lung_y, lung_w, lung_h) & ~((v > lung_y + 0.05) & (np.abs(u - 0.5) < 0.09))
        lungs.append((m, cx))
        img[m] = 0.16 + 0.08 * (v[m] - lung_y)  # denser towards the base
    ribs = (np.sin((v + 0.25 * (u - 0.5) ** 2) * 2 * np.pi * 7.5 + rng.uniform(0, 2 * np.pi)) > 0.55)
    for m, _ in lungs:
        img[m & ribs] += 0.07
    img[(np.abs(u - 0.5) < 0.045) & body] += 0.2  # spine
    img[(np.abs(u - 0.5) < 0.08) & (v < lung_y)] += 0.12  # mediastinum
    for side in (-1, 1):  # clavicles
        img[(np.abs(v - (0.2 + 0.12 * np.abs(u - 0.5))) < 0.018) & (np.abs(u - 0.5) > 0.05)
            & (np.abs(u - 0.5) < 0.36) & (np.sign(u - 0.5) == side)] += 0.18
    dia = v > lung_y + lung_h * (0.92 - 0.5 * ((u - 0.5) / 0.45) ** 2)  # diaphragm domes
    img[dia & (img > 0.1)] = np.maximum(img[dia & (img > 0.1)], 0.5)

    boxes: dict[str, tuple[int, int, int, int]] = {}
    big = "Cardiomegaly" in findings
    hx, hy = 0.55 + j(0.01), lung_y + 0.16 + j(0.01)
    hr = (0.21 + j(0.01), 0.15 + j(0.008)) if big else (0.12 + j(0.008), 0.10 + j(0.006))
    heart = _ellipse(u, v, hx, hy, *hr)
    img[heart] = np.maximum(img[heart], 0.52 + j(0.02))
    if big:
        boxes["Cardiomegaly"] = _box_of(heart, 0)
    if "Effusion" in findings:
        m, cx = lungs[rng.integers(2)]
        ys = np.nonzero(m.any(axis=1))[0]
        level = ys.max() - rng.integers(8, 12)
        # fluid brighter than the diaphragm, its edge rising towards the chest wall (meniscus)
        edge = level - 3.0 * (np.abs(u - cx) / lung_w) ** 2 * size / SIZE
        fluid = m & (np.arange(size)[:, None] >= edge)
        img[fluid] = 0.7 + j(0.02)
        boxes["Effusion"] = _box_of(fluid, 0)
    if "Infiltration" in findings:
        m, cx = lungs[rng.integers(2)]
        cy = lung_y + rng.uniform(-0.08, 0.06)
        patch = _ellipse(u, v, cx + j(0.02), cy, 0.08, 0.09) & m
        mottle = ndimage.gaussian_filter(rng.random((size, size)), 0.8)
        img[patch] += 0.12 + 0.5 * np.clip(mottle[patch] - 0.45, 0, None)
        boxes["Infiltration"] = _box_of(patch, 0)
    if "Nodule" in findings:
        m, cx = lungs[rng.integers(2)]
        while True:
            x, y = cx + rng.uniform(-0.09, 0.09), lung_y + rng.uniform(-0.2, 0.08)
            r = rng.uniform(0.035, 0.05)
            spot = _ellipse(u, v, x, y, r, r)
            if spot.any() and (spot & m).sum() == spot.sum():
                break
        img[spot] += 0.38
        boxes["Nodule"] = _box_of(spot, 1)

    img = ndimage.gaussian_filter(img, rng.uniform(0.5, 0.9))
    img = img * rng.uniform(0.85, 1.1) + rng.normal(0, 0.02, img.shape)  # exposure, film noise
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    return np.clip(img, 0, 1), boxes


def _draw_findings(rng: np.random.Generator) -> tuple[str, ...]:
    if rng.random() < 0.3:
        return ()
    k = 2 if rng.random() < 0.3 else 1
    return tuple(sorted(rng.choice(FINDINGS, size=k, replace=False)))


def write_dicom(path: Path, img: np.ndarray, monochrome1: bool = False) -> None:
    """A 12-bit single-frame DICOM of a [0, 1] image, with a window that shows the full range."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    values = np.round(img * 4095).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path.name)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", path.stem
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = ((4095 - values) if monochrome1 else values).astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())


def write_split(root: Path, n: int, seed: int, dicom_every: int = 0, size: int = SIZE) -> Path:
    """n images, metadata.csv and BBox_List_2017.csv under root; every `dicom_every`-th image as DICOM."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    meta, box_rows, n_dicom = [], [], 0
    for i in range(n):
        findings = _draw_findings(rng)
        img, boxes = radiograph(rng, findings, size)
        stem = f"{seed % 10**5:05d}{i:03d}_000"
        if dicom_every and i % dicom_every == dicom_every - 1:
            name = f"{stem}.dcm"
            write_dicom(root / name, img, monochrome1=n_dicom % 2 == 1)
            n_dicom += 1
        else:
            name = f"{stem}.png"
            Image.fromarray(np.round(img * 255).astype(np.uint8), "L").save(root / name)
        meta.append({"file_name": name, "label": "|".join(findings) or NO_FINDING})
        for f in findings:
            box_rows.append([name, BOX_NAMES.get(f, f), *boxes[f]])
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["file_name", "label"])
        w.writeheader()
        w.writerows(meta)
    with open(root / "BBox_List_2017.csv", "w", newline="") as f:
        f.write(NIH_HEADER + "\n")  # verbatim, unquoted, as NIH distributes it
        csv.writer(f).writerows(box_rows)
    return root


def xray_data(root: str | Path, n_train: int = 600, n_test: int = 100, seed: int = 0) -> Path:
    """root/train and root/test (disjoint seeds); a few images of each as DICOM. Returns root."""
    root = Path(root)
    write_split(root / "train", n_train, seed * 2 + 1, dicom_every=50)
    write_split(root / "test", n_test, seed * 2 + 2, dicom_every=10)
    return root
