"""Sampler sharding and resumption, seeded augmentation, mixup, and the bad-input messages."""

import pytest
import torch
from PIL import Image

from attentive_norm.data import folder
from attentive_norm.data.folder import DataError, ImageFolderData, image_folder_splits
from attentive_norm.data.loader import Augmented, Skipped, collate, make_loader
from attentive_norm.data.mixup import mixup, mixup_loss
from attentive_norm.data.sampler import ShardSampler
from attentive_norm.data.transforms import imagenet_train


def batches(sampler: ShardSampler) -> list[list[int]]:
    items = [i for _, i in sampler]
    b = sampler.batch_size
    return [items[k : k + b] for k in range(0, len(items), b)]


def test_shards_of_a_global_batch_are_the_single_process_batch():
    single = batches(ShardSampler(103, 8, seed=3))
    shards = [batches(ShardSampler(103, 4, world_size=2, rank=r, seed=3)) for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 103 // 8
    for k, batch in enumerate(single):
        assert sorted(batch) == sorted(shards[0][k] + shards[1][k])


def test_epochs_differ_and_a_resumed_epoch_continues_where_it_stopped():
    sampler = ShardSampler(50, 5, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    assert all(e == 1 for e, _ in full)
    sampler.set_epoch(2)
    assert [i for _, i in sampler] != [i for _, i in full]
    sampler.set_epoch(1, start_batch=4)
    assert list(sampler) == full[20:] and len(sampler) == 30


def test_evaluation_shards_cover_every_image_once():
    shards = [ShardSampler(11, 4, world_size=3, rank=r, shuffle=False, drop_last=False) for r in range(3)]
    seen = sorted(i for s in shards for _, i in s)
    assert seen == list(range(11))
    assert [s.batches_per_epoch() for s in shards] == [1, 1, 1] and [len(s) for s in shards] == [4, 4, 3]


class Noise:
    """A source whose transform is pure randomness, to see the per-sample seeding."""

    classes = ("a", "b")

    def __len__(self):
        return 12

    def load(self, index):
        if index == 5:
            raise OSError("image file is truncated")
        return torch.zeros(3), index % 2

    def describe(self, index):
        return f"noise/{index}.png"


def random_transform(x):
    return x + torch.rand(3)


def test_augmentation_depends_on_seed_epoch_and_index_only():
    data = Augmented(Noise(), random_transform, seed=7)
    first = data[(0, 3)][0]
    torch.manual_seed(123)  # the global stream does not matter ...
    assert torch.equal(data[(0, 3)][0], first)
    assert not torch.equal(data[(1, 3)][0], first)  # ... the epoch does
    state = torch.get_rng_state()
    data[(0, 4)]
    assert torch.equal(torch.get_rng_state(), state)  # and the global stream is left alone


def test_worker_count_does_not_change_the_batches():
    data = Augmented(Noise(), random_transform, seed=1)
    runs = []
    for workers in (0, 2):
        loader = make_loader(data, ShardSampler(12, 4, drop_last=False), workers, False, seed=0)
        runs.append([x for x, _, _ in loader])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_unreadable_samples_are_counted_and_dropped_from_the_batch():
    data = Augmented(Noise(), random_transform, seed=0)
    skipped = data[(0, 5)]
    assert isinstance(skipped, Skipped) and "noise/5.png" in skipped.what and "truncated" in skipped.reason
    x, y, bad = collate([data[(0, i)] for i in (4, 5, 6)])
    assert x.shape == (2, 3) and y.tolist() == [0, 0] and bad == [skipped]


def test_mixup_uses_one_lambda_per_batch_and_the_authors_loss():
    x = torch.randn(6, 3, 4, 4)
    y = torch.arange(6)
    mixed, partner, lam = mixup(x, y, alpha=0.2, seed=11)
    perm = partner  # labels are indices here
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[perm])
    again = mixup(x, y, alpha=0.2, seed=11)
    assert again[2] == lam and torch.equal(again[1], partner)
    logits = torch.randn(6, 6)
    expected = lam * torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1) + (
        1 - lam
    ) * torch.nn.functional.cross_entropy(logits, partner, label_smoothing=0.1)
    assert torch.allclose(mixup_loss(logits, y, partner, lam, 0.1), expected)


def make_image_folder(root, classes=("cat", "dog"), per_class=3, size=20):
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                color = (40 * c + 10 * i, 100, 200 - 30 * c)
                Image.new("RGB", (size, size + i), color).save(root / split / name / f"{i}.png")
    return root


def test_image_folder_reads_classes_and_images(tmp_path):
    train, val = image_folder_splits(make_image_folder(tmp_path))
    assert train.classes == ["cat", "dog"] == val.classes and len(train) == 6
    image, label = train.load(4)
    assert image.mode == "RGB" and label == 1
    x = imagenet_train(16)(image)
    assert x.shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root / "train").mkdir(parents=True), "no val/ folder"),
        (lambda root: [(root / s).mkdir(parents=True) for s in ("train", "val")], "has no class folders"),
        (lambda root: (make_image_folder(root), (root / "train" / "emu").mkdir()), "without images: emu"),
        (
            lambda root: (make_image_folder(root), (root / "val" / "emu").mkdir()),
            "not in the training set: emu",
        ),
    ],
)
def test_layout_problems_are_named_before_training(tmp_path, breakage, message):
    root = tmp_path / "data"
    breakage(root)
    with pytest.raises(DataError, match=message):
        image_folder_splits(root)


def test_unreadable_files_are_left_out_with_a_warning(tmp_path):
    root = make_image_folder(tmp_path)
    (root / "train" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.warns(UserWarning, match=r"skipping 1 unreadable images: .*broken.png"):
        train = ImageFolderData(root / "train")
    assert len(train) == 6
    for path in (root / "train" / "dog").iterdir():
        path.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="without readable images: dog"):
        ImageFolderData(root / "train")


def test_large_datasets_skip_unreadable_files_while_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(folder, "VERIFY_UP_TO", 0)
    root = make_image_folder(tmp_path)
    (root / "train" / "cat" / "broken.png").write_bytes(b"garbage")
    train = ImageFolderData(root / "train")
    data = Augmented(train, imagenet_train(16), seed=0)
    results = [data[(0, i)] for i in range(len(train))]
    skipped = [r for r in results if isinstance(r, Skipped)]
    assert len(skipped) == 1 and skipped[0].what.endswith("broken.png")


def test_mixed_seeds_fit_32_bits_and_change_with_every_part():
    from attentive_norm.data.seeds import mix_seed

    seeds = {mix_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450 and max(seeds) < 2**32
