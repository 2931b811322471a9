import hashlib
import shutil
import zipfile

import numpy as np
import pytest
import torch

from conftest import run_cli
from formats import CIFAR_CLASSES, tar_gz, write_cifar10, write_tinyimagenet
from superlens.data import cifar10, load, tinyimagenet
from superlens.errors import UserError


# --- digits ----------------------------------------------------------------------

def test_digits_split_is_fixed_stratified_and_rgb():
    train, test = load("digits")
    assert train.images.shape == (1347, 3, 32, 32) and test.images.shape == (450, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes == [str(d) for d in range(10)]
    assert torch.equal(train.images[:, 0], train.images[:, 1])  # gray replicated to RGB
    # stratified: every class holds about a quarter of its images in test
    frac = test.class_counts() / (train.class_counts() + test.class_counts())
    assert np.all(np.abs(frac - 0.25) < 0.02)
    again = load("digits")
    assert torch.equal(again.test.images, test.images)


def test_data_check_digits_prints_ten_classes(capsys):
    code, out, err = run_cli(["data", "check", "digits"], capsys)
    assert code == 0, err
    assert "digits: 10 classes" in out
    assert "train    1347" in out and "test      450" in out
    assert len([line for line in out.splitlines() if line[:1].isdigit()]) == 10


# --- CIFAR-10 --------------------------------------------------------------------

def test_cifar10_reads_python2_pickles_in_official_layout(tmp_path):
    written = write_cifar10(tmp_path, per_batch=20)
    train, test = load("cifar10", root=tmp_path)
    assert train.classes == CIFAR_CLASSES
    assert len(train) == 100 and len(test) == 20
    # rows are stored CHW: the first 1024 bytes are the red plane
    assert np.array_equal(train.images[20].numpy().reshape(-1), written["data_batch_2"][0])
    assert np.array_equal(test.images.numpy().reshape(20, -1), written["test_batch"])
    assert test.labels.tolist() == [i % 10 for i in range(20)]
    assert (train.class_counts() == 10).all()


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path):
    write_cifar10(tmp_path)
    train, _ = load("cifar10", root=tmp_path / "cifar-10-batches-py")
    assert len(train) == 100


def test_cifar10_from_archive_checks_md5_and_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar10(src)
    root = tmp_path / "root"
    root.mkdir()
    md5 = tar_gz(src / "cifar-10-batches-py", root / "cifar-10-python.tar.gz")
    with pytest.raises(UserError, match="wrong md5 checksum"):
        load("cifar10", root=root)  # our miniature archive is not the official file
    monkeypatch.setattr(cifar10, "MD5", md5)
    train, test = load("cifar10", root=root)
    assert len(train) == 100 and (root / "cifar-10-batches-py" / "test_batch").exists()


def test_cifar10_truncated_archive_is_a_clear_error(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    tar_gz(src / "cifar-10-batches-py", archive)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    with pytest.raises(UserError, match="truncated or damaged"):
        load("cifar10", root=tmp_path)


def test_cifar10_missing_is_a_clear_cli_error(tmp_path, capsys):
    code, out, err = run_cli(["data", "check", "cifar10", "--root", tmp_path], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "CIFAR-10 not found" in err and "--download" in err
    assert "Traceback" not in err


def test_cifar10_wrong_layout_names_the_missing_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError, match="data_batch_3 is missing"):
        load("cifar10", root=tmp_path)


def test_cifar10_python3_pickle_of_wrong_content_is_rejected(tmp_path):
    import pickle

    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(UserError, match="lacks the keys"):
        load("cifar10", root=tmp_path)


# --- Tiny ImageNet ---------------------------------------------------------------

WNIDS = ["n02124075", "n01443537", "n09999999"]


def test_tinyimagenet_official_layout(tmp_path):
    write_tinyimagenet(tmp_path, WNIDS, per_class_train=3, per_class_val=2)
    train, test = load("tinyimagenet", root=tmp_path)
    assert train.images.shape == (9, 3, 64, 64) and test.images.shape == (6, 3, 64, 64)
    # labels follow the sorted class ids; names come from words.txt
    assert train.meta["wnids"] == sorted(WNIDS)
    assert train.classes == [f"{w}-name" for w in sorted(WNIDS)]
    assert train.class_counts().tolist() == [3, 3, 3] and test.class_counts().tolist() == [2, 2, 2]
    # val labels come from val_annotations.txt: val_0 is WNIDS[0]
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG").convert("RGB"))
    assert np.array_equal(test.images[0].permute(1, 2, 0).numpy(), img)
    assert test.labels[0] == sorted(WNIDS).index(WNIDS[0])
    # the grayscale image became RGB with equal channels
    gray = train.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_tinyimagenet_second_load_reads_the_cache(tmp_path, monkeypatch):
    write_tinyimagenet(tmp_path, WNIDS)
    first = load("tinyimagenet", root=tmp_path)
    assert (tmp_path / "tiny-imagenet-200" / ".superlens-cache" / "key.txt").exists()

    def no_decoding(files):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(tinyimagenet, "_decode", no_decoding)
    second = load("tinyimagenet", root=tmp_path)
    assert torch.equal(first.train.images, second.train.images)


def test_tinyimagenet_unwritable_folder_caches_in_user_cache(tmp_path, monkeypatch):
    folder = write_tinyimagenet(tmp_path, WNIDS)
    (folder / ".superlens-cache").write_text("a file where the cache folder would go")
    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("SUPERLENS_CACHE", str(user_cache))
    first = load("tinyimagenet", root=tmp_path)
    assert len(list(user_cache.glob("tinyimagenet-*/key.txt"))) == 1
    monkeypatch.setattr(tinyimagenet, "_decode", lambda files: 1 / 0)
    assert torch.equal(load("tinyimagenet", root=tmp_path).test.images, first.test.images)


def test_tinyimagenet_from_zip(tmp_path, monkeypatch):
    src = write_tinyimagenet(tmp_path / "src", WNIDS)
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in src.rglob("*"):
            zf.write(path, path.relative_to(src.parent))
    monkeypatch.setattr(tinyimagenet, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    train, _ = load("tinyimagenet", root=root)
    assert len(train) == 9


def test_tinyimagenet_wrong_layout(tmp_path):
    folder = write_tinyimagenet(tmp_path, WNIDS)
    shutil.rmtree(folder / "train" / WNIDS[1])
    with pytest.raises(UserError, match=f"train/{WNIDS[1]}/images is missing"):
        load("tinyimagenet", root=tmp_path)
    (folder / "val" / "val_annotations.txt").unlink()
    shutil.rmtree(folder / "train")
    with pytest.raises(UserError, match="missing"):
        load("tinyimagenet", root=tmp_path)


# --- image folder, synthetic, registry --------------------------------------------

def test_imagefolder_reads_user_images(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                size = (16, 16) if i else (20, 12)  # one odd size: resized to the first image's
                Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    train, test = load(f"imagefolder:{tmp_path}")
    assert train.classes == ["cat", "dog"] and len(train) == 6 and len(test) == 2
    assert train.images.shape[2:] == (12, 20)
    first = np.asarray(Image.open(tmp_path / "train" / "cat" / "0.png"))
    assert np.array_equal(train.images[0].permute(1, 2, 0).numpy(), first)
    resized, _ = load(f"imagefolder:{tmp_path}", image_size=8)
    assert resized.images.shape == (6, 3, 8, 8)
    assert np.allclose(train.mean, (train.images.double() / 255).mean(dim=(0, 2, 3)).numpy())


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match="train/<class>/ and test/<class>/"):
        load(f"imagefolder:{tmp_path}")
    with pytest.raises(UserError, match="needs a path"):
        load("imagefolder:")


def test_synthetic_planted_features_follow_class_ownership():
    train, test = load("synthetic", n_train=300, n_test=50, seed=3)
    own = train.meta["class_features"]
    feats = train.attributes["features"].numpy()
    labels = train.labels.numpy()
    assert feats.shape == (300, 16) and own.shape == (10, 16)
    assert np.all(feats[own[labels] == 0] == 0)  # only the class's own features appear
    assert np.all((feats > 0).sum(1) >= 1)
    assert (own.sum(0) > 1).any()  # some feature is shared by several classes
    again = load("synthetic", n_train=300, n_test=50, seed=3)
    assert torch.equal(again.train.images, train.images)


def test_unknown_dataset_and_option(capsys):
    with pytest.raises(UserError, match="unknown dataset 'mnist'; known: digits, cifar10"):
        load("mnist")
    with pytest.raises(UserError, match="has no option 'size'"):
        load("digits", size=3)
    code, _, err = run_cli(["data", "check", "mnist"], capsys)
    assert code == 2 and err.startswith("superlens: error: unknown dataset")
