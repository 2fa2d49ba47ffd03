import datasets
import numpy as np
import pytest
import torch

from hf_llpf.data.bundle import SeededLoader, cifar_augment, load_data
from hf_llpf.errors import ConfigError, OfflineError, UnknownNameError

torch.set_num_threads(1)


def test_digits_split_is_fixed_and_complete(digits):
    assert len(digits.train) == 1437 and len(digits.test) == 360
    assert digits.train.column_names == ["image", "label"]
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    again = load_data("digits")
    assert torch.equal(again.train_tensors.labels, digits.train_tensors.labels)
    assert torch.equal(again.test_tensors.images, digits.test_tensors.images)


def test_same_seed_same_batches_other_seed_other_order(digits):
    a = [y for _, y in digits.loader(batch_size=32, seed=3)]
    b = [y for _, y in digits.loader(batch_size=32, seed=3)]
    c = [y for _, y in digits.loader(batch_size=32, seed=4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    # an epoch visits every sample exactly once
    assert sorted(torch.cat(a).tolist()) == sorted(digits.train_tensors.labels.tolist())


def test_stream_resumes_at_the_same_batch(digits):
    loader = digits.loader(batch_size=100, seed=0, augment=True)
    stream = loader.stream()
    for _ in range(17):  # crosses an epoch boundary (15 batches per epoch)
        next(stream)
    state = loader.state_dict()
    expected = [next(stream) for _ in range(3)]
    fresh = digits.loader(batch_size=100, seed=0, augment=True)
    fresh.load_state_dict(state)
    got = [b for _, b in zip(range(3), fresh.stream(), strict=False)]
    for (x1, y1), (x2, y2) in zip(expected, got, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_normalisation_and_upscaling():
    bundle = load_data("digits", image_size=32, mean=(0.5,), std=(0.25,))
    x, _ = next(iter(bundle.loader("test", batch_size=360, seed=0)))
    assert x.shape == (360, 1, 32, 32)
    raw = bundle.test_tensors.images.float() / 255
    assert torch.allclose(x, (raw - 0.5) / 0.25)


def test_cifar_augment_crops_and_flips():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = cifar_augment(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    # every output pixel is an input pixel or padding zero
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def _parquet(tmp_path, n=40):
    rng = np.random.default_rng(0)
    ds = datasets.Dataset.from_dict(
        {
            "picture": [rng.integers(0, 255, (6, 6), dtype=np.uint8) for _ in range(n)],
            "target": [i % 4 for i in range(n)],
        },
        features=datasets.Features({"picture": datasets.Image(), "target": datasets.ClassLabel(num_classes=4)}),
    )
    path = tmp_path / "data.parquet"
    ds.to_parquet(str(path))
    return path


def test_local_parquet_with_named_columns(tmp_path):
    path = _parquet(tmp_path)
    bundle = load_data(str(path), image_column="picture", label_column="target")
    assert bundle.num_classes == 4
    assert len(bundle.train) + len(bundle.test) == 40 and len(bundle.test) == 8  # held out with a fixed seed
    assert bundle.input_shape == (1, 6, 6)


def test_missing_column_names_the_columns_found(tmp_path):
    path = _parquet(tmp_path)
    with pytest.raises(UnknownNameError, match=r"image_column.*picture.*target"):
        load_data(str(path), label_column="target")
    with pytest.raises(UnknownNameError, match=r"'lbl'.*picture, target"):
        load_data(str(path), image_column="picture", label_column="lbl")


def test_arrow_folder_and_unknown_split(tmp_path, digits):
    folder = tmp_path / "arrow"
    datasets.DatasetDict({"train": digits.train, "validation": digits.test}).save_to_disk(str(folder))
    bundle = load_data(str(folder), test_split="validation")
    assert len(bundle.test) == 360
    with pytest.raises(UnknownNameError, match=r"split 'test'; available: train, validation"):
        load_data(str(folder))


def test_image_folder(tmp_path):
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((5, 5, 3), i * 20, dtype=np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    bundle = load_data(str(tmp_path / "imgs"))
    assert bundle.num_classes == 2 and bundle.input_shape == (3, 5, 5)


def test_unknown_dataset_and_offline_hub_id():
    with pytest.raises(UnknownNameError, match="digits"):
        load_data("mnist_please")
    with pytest.raises(OfflineError, match="local folder"):
        load_data("uoft-cs/cifar10")


def test_bad_option_lists_valid_keys():
    with pytest.raises(ConfigError, match="did you mean 'image_size'"):
        load_data("digits", image_sise=32)
    with pytest.raises(ConfigError, match=r"image_size=1: Input should be greater than or equal to 4"):
        load_data("digits", image_size=1)


def test_seeded_loader_shards_split_each_batch(digits):
    whole = SeededLoader(digits.train_tensors, batch_size=10, seed=1)
    parts = [SeededLoader(digits.train_tensors, batch_size=10, seed=1, num_shards=2, shard_index=i) for i in (0, 1)]
    (_, y), (_, y0), (_, y1) = next(iter(whole)), next(iter(parts[0])), next(iter(parts[1]))
    assert sorted(torch.cat([y0, y1]).tolist()) == sorted(y.tolist())
