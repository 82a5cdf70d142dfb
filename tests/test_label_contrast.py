"""The planted benchmark's pairwise baseline finds a patch that only one label shows, where it is."""
import numpy as np

from benchmarks.label_contrast import contrast_maps


def test_the_map_peaks_on_what_the_other_labels_never_show():
    rng = np.random.default_rng(0)
    train = rng.uniform(0.4, 0.6, (8, 32, 32, 3)).astype(np.float32)  # the same noise texture for both labels
    labels = ["a"] * 4 + ["b"] * 4
    train[:4, 4:10, 20:26] = 1.0  # label a: a white square, top right
    test = rng.uniform(0.4, 0.6, (2, 32, 32, 3)).astype(np.float32)
    test[0, 18:24, 6:12] = 1.0  # a's square elsewhere: the other label never shows it
    maps = contrast_maps(train, labels, test, ["a", "b"])
    y, x = np.unravel_index(np.argmax(maps[0]), maps[0].shape)
    assert 18 - 8 < y < 24 + 8 and 6 - 8 < x < 12 + 8  # inside a patch that covers the square
    assert maps[0].max() > 3 * maps[1].max()  # b's plain texture is found among a's patches
