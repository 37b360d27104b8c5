"""Datasets (offline and full-scale readers on tiny files), fixed subsets, stateless batches and DDP shards."""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import sysconfig
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from wdlib import data as D
from wdlib.data import (
    DataNotFoundError,
    Dataset,
    TokenDataset,
    batch_indices,
    batches,
    check_vocab,
    cifar10,
    digits,
    load,
    mnist1d,
    openwebtext,
    stdlib_chars,
    subset,
    token_file,
    write_tokens,
)

SMALL = 200_000  # bytes of stdlib text for the tests


def toy(n: int = 20, n_test: int = 6) -> Dataset:
    """Inputs that carry their own index, so batches can be checked against indices."""
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    return Dataset("toy", x, torch.arange(n), torch.zeros(n_test, 3), torch.zeros(n_test, dtype=torch.int64), 10)


# ----------------------------------------------------------------------------------------------- digits


def test_digits_shapes_standardized_and_deterministic():
    a, b = digits(seed=0), digits(seed=0)
    assert a.x_train.shape == (1438, 1, 8, 8) and a.x_test.shape == (359, 1, 8, 8)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64 and a.num_classes == 10
    assert abs(a.x_train.mean().item()) < 1e-5 and abs(a.x_train.std().item() - 1) < 1e-3
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, digits(seed=1).y_train)
    assert digits(test_fraction=0.5).x_test.shape[0] == 898  # round(1797 * 0.5)
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=1.0)
    with pytest.raises(ValueError, match="seed"):
        digits(seed=-1)


# ----------------------------------------------------------------------------------------------- stdlib_chars


def test_stdlib_chars_is_deterministic_and_records_its_vocab():
    a = stdlib_chars(SMALL)
    b = stdlib_chars(SMALL)
    assert isinstance(a, TokenDataset) and a.train.dtype == torch.int64 and a.train.ndim == 1
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    n = len(a.train) + len(a.val)
    assert len(a.val) == n - int(n * 0.9)
    vocab = a.meta["vocab"]
    assert vocab == "".join(sorted(set(vocab))) and a.vocab_size == len(vocab)
    assert int(torch.cat([a.train, a.val]).max()) == a.vocab_size - 1
    assert a.meta["files"] > 0 and len(a.meta["sha256"]) == 64 and a.meta["python"]
    assert a.meta["bytes"] <= SMALL
    text = "".join(vocab[i] for i in torch.cat([a.train, a.val]).tolist())
    files = [path for _, path in D._stdlib_files(Path(sysconfig.get_paths()["stdlib"]))][: a.meta["files"]]
    assert text.split(D._STDLIB_SEPARATOR)[:3] == [f.read_text(encoding="utf-8") for f in files[:3]]
    a.train[0] = -1  # callers' changes do not reach the cache
    assert int(stdlib_chars(SMALL).train[0]) != -1


def test_check_vocab_refuses_another_vocabulary():
    ds = stdlib_chars(SMALL)
    check_vocab(ds, ds.meta["vocab"])
    other = ds.meta["vocab"].replace("x", "") + "\u00e9"
    with pytest.raises(ValueError, match="not comparable") as err:
        check_vocab(ds, other, python="3.99.0")
    assert "3.99.0" in str(err.value) and "'x'" in str(err.value)
    with pytest.raises(ValueError, match="val_fraction"):
        stdlib_chars(SMALL, val_fraction=0.0)


# ----------------------------------------------------------------------------------------------- CIFAR-10


def write_cifar(folder, per_batch: int = 10, batches_n: int = 5, seed: int = 0):
    """The official python-pickle layout, tiny: data_batch_1..5 and test_batch of ``per_batch`` images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, batches_n + 1)] + ["test_batch"]
    for name in names:
        d = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, per_batch).tolist(),
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    return names


def test_cifar10_reads_the_official_pickle_batches(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    ds = cifar10(tmp_path)
    assert ds.x_train.shape == (50, 3, 32, 32) and ds.x_test.shape == (10, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    pixel = raw[b"data"][3, 1024 + 5 * 32 + 7] / 255.0  # image 3, green channel, row 5, column 7
    expect = (pixel - D.CIFAR10_MEAN[1]) / D.CIFAR10_STD[1]
    assert ds.x_train[3, 1, 5, 7].item() == pytest.approx(expect, rel=1e-5)
    assert ds.y_train[:10].tolist() == raw[b"labels"]
    assert torch.equal(cifar10(tmp_path / "cifar-10-batches-py").x_test, ds.x_test)  # the folder itself works


def test_cifar10_missing_files_name_the_offline_alternative(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="full-scale.*smoke.*download=True"):
        cifar10(tmp_path)
    write_cifar(tmp_path / "cifar-10-batches-py", batches_n=2)
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        cifar10(tmp_path)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(D.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match="could not be downloaded.*smoke"):
        cifar10(tmp_path / "elsewhere", download=True)
    assert not list((tmp_path / "elsewhere").glob("*.part"))


def test_cifar10_download_checks_and_extracts(tmp_path, monkeypatch):
    write_cifar(tmp_path / "src" / "cifar-10-batches-py", per_batch=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = buf.getvalue()
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(archive))
    monkeypatch.setattr(D, "_CIFAR10_MD5", "0" * 32)
    with pytest.raises(RuntimeError, match="corrupt"):
        cifar10(tmp_path / "dl", download=True)
    monkeypatch.setattr(D, "_CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    assert cifar10(tmp_path / "dl", download=True).x_train.shape == (10, 3, 32, 32)


# ----------------------------------------------------------------------------------------------- token files


def test_token_files_round_trip_and_openwebtext(tmp_path):
    tokens = np.arange(0, 50_000, 7) % D.GPT2_VOCAB_SIZE
    path = write_tokens(tokens, tmp_path / "train.bin")
    mm = token_file(path)
    assert isinstance(mm, np.memmap) and mm.dtype == np.uint16 and np.array_equal(mm, tokens)
    assert not list(tmp_path.glob("*.tmp"))
    write_tokens(torch.tensor([5, 6, 7, 8, 9, 10]), tmp_path / "val.bin")
    ds = openwebtext(tmp_path)
    assert ds.vocab_size == 50257 and len(ds.train) == len(tokens) and ds.meta["val_tokens"] == 6
    x, y = ds.with_block_size(16).batch(3, 1, batch_size=4)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    starts = (x[:, 0] // 7).tolist()  # token k*7 sits at position k
    for row, s in zip(x, starts):
        assert torch.equal(row, torch.from_numpy(tokens[s : s + 16].astype(np.int64)))
    ((xv, yv),) = ds.eval_batches(2, 4, count=1)
    assert xv.shape == (2, 4) and torch.equal(xv[:, 1:], yv[:, :-1])


def test_token_file_errors(tmp_path):
    with pytest.raises(ValueError, match="tokens"):
        write_tokens([70_000], tmp_path / "t.bin")
    with pytest.raises(ValueError, match="tokens"):
        write_tokens(np.zeros((2, 2), dtype=np.int64), tmp_path / "t.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="multiple of 2"):
        token_file(tmp_path / "odd.bin")
    with pytest.raises(FileNotFoundError, match="full-scale.*stdlib_chars"):
        openwebtext(tmp_path)


# ----------------------------------------------------------------------------------------------- subsets


def test_subsets_are_nested_and_share_the_test_set():
    ds = digits()
    small, big = subset(ds, 100, seed=3), subset(ds, 400, seed=3)
    assert small.x_train.shape[0] == 100 and big.x_train.shape[0] == 400
    assert torch.equal(big.x_train[:100], small.x_train) and torch.equal(big.y_train[:100], small.y_train)
    assert torch.equal(small.x_test, ds.x_test) and torch.equal(big.y_test, ds.y_test)
    assert not torch.equal(subset(ds, 100, seed=4).y_train, small.y_train)
    for size in (0, ds.x_train.shape[0] + 1):
        with pytest.raises(ValueError, match="size"):
            subset(ds, size, seed=0)


# ----------------------------------------------------------------------------------------------- batching


def test_batch_indices_cover_an_epoch_once_and_are_stateless():
    n, bs = 23, 5  # 4 full batches per epoch, 3 indices dropped
    epoch = torch.cat([batch_indices(n, bs, s, seed=7) for s in range(4)])
    assert len(set(epoch.tolist())) == 20 and epoch.max() < n
    again = torch.cat([batch_indices(n, bs, s, seed=7) for s in (3, 2, 1, 0)][::-1])  # any order, same batches
    assert torch.equal(epoch, again)
    assert not torch.equal(batch_indices(n, bs, 0, seed=7), batch_indices(n, bs, 4, seed=7))  # next epoch
    assert not torch.equal(epoch, torch.cat([batch_indices(n, bs, s, seed=8) for s in range(4)]))
    expect = torch.randperm(n, generator=torch.Generator().manual_seed(7 * 1_000_003 + 1))[5:10]
    assert torch.equal(batch_indices(n, bs, 5, seed=7), expect)
    batch_indices(n, bs, 0, seed=7)[:] = -1  # the cached permutation is not exposed
    assert batch_indices(n, bs, 0, seed=7).min() >= 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n=0, batch_size=1, step=0, seed=0), "n"),
        (dict(n=10, batch_size=11, step=0, seed=0), "batch_size"),
        (dict(n=10, batch_size=2, step=-1, seed=0), "step"),
        (dict(n=10, batch_size=2, step=0, seed=-3), "seed"),
        (dict(n=10, batch_size=2.0, step=0, seed=0), "batch_size"),
    ],
)
def test_batch_indices_reject_bad_inputs(kwargs, name):
    with pytest.raises(ValueError, match=name):
        batch_indices(**kwargs)


def test_dataset_batch_shards_concatenate_to_the_global_batch():
    ds = toy()
    x, y = ds.batch(6, 2, batch_size=8)
    assert torch.equal(y, batch_indices(20, 8, 6, 2)) and torch.equal(x[:, 0].long(), y)
    for world in (2, 4):
        shards = [ds.batch(6, 2, batch_size=8, rank=r, world_size=world) for r in range(world)]
        assert torch.equal(torch.cat([s[0] for s in shards]), x)
        assert torch.equal(torch.cat([s[1] for s in shards]), y)
    with pytest.raises(ValueError, match="world_size"):
        ds.batch(0, 0, batch_size=8, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        ds.batch(0, 0, batch_size=8, rank=2, world_size=2)


def test_dataset_eval_batches():
    ds = toy()
    got = list(ds.eval_batches("train", batch_size=6))
    assert [len(yb) for _, yb in got] == [6, 6, 6, 2] and torch.equal(torch.cat([yb for _, yb in got]), ds.y_train)
    assert sum(len(yb) for _, yb in ds.eval_batches(batch_size=4, limit=5)) == 5
    with pytest.raises(ValueError, match="split"):
        next(ds.eval_batches("val"))


def test_token_batch_shards_and_determinism():
    ds = stdlib_chars(SMALL).with_block_size(32)
    x, y = ds.batch(11, 5, batch_size=8)
    assert x.shape == (8, 32) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(ds.batch(11, 5, batch_size=8)[0], x) and not torch.equal(ds.batch(12, 5, batch_size=8)[0], x)
    shards = [ds.batch(11, 5, batch_size=8, rank=r, world_size=4) for r in range(4)]
    assert torch.equal(torch.cat([s[0] for s in shards]), x) and torch.equal(torch.cat([s[1] for s in shards]), y)
    memmap_like = TokenDataset("np", ds.train.numpy().astype(np.uint16), ds.val.numpy(), ds.vocab_size, {}, 32)
    assert torch.equal(memmap_like.batch(11, 5, batch_size=8)[1], y)  # the numpy path gathers the same windows
    a, b = list(ds.eval_batches(4, 16, count=3)), list(ds.eval_batches(4, 16, count=3))
    assert len(a) == 3 and all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    with pytest.raises(ValueError, match="block_size"):
        ds.with_block_size(len(ds.train)).batch(0, 0, batch_size=2)
    with pytest.raises(ValueError, match="block_size"):
        stdlib_chars(SMALL).batch(0, 0, batch_size=2)  # no window length bound
    with pytest.raises(ValueError, match="batch_size"):
        ds.with_block_size(8).batch(0, 0, batch_size=6, world_size=4)


# ----------------------------------------------------------------------------------------------- registry


def test_load_registry(tmp_path):
    assert torch.equal(load("digits", seed=2).y_test, digits(seed=2).y_test)
    assert load("mnist1d", num_samples=100, seed=1).x_train.shape == (80, 40)
    with pytest.raises(ValueError, match="'digits'.*'openwebtext'"):
        load("imagenet")
    with pytest.raises(ValueError, match="max_byte"):
        load("stdlib_chars", max_byte=10)
    with pytest.raises(ValueError, match="root"):
        load("cifar10")
    with pytest.raises(FileNotFoundError, match="smoke"):
        load("openwebtext", root=tmp_path)


def test_mnist1d_is_generated_offline_and_deterministic():
    a = mnist1d(200, seed=3)
    b = mnist1d(200, seed=3)
    assert a.x_train.shape == (160, 40) and a.x_test.shape == (40, 40)
    assert a.input_dim == 40 and a.num_classes == 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, mnist1d(200, seed=4).x_train)


def test_mnist1d_leaves_global_rngs_alone():
    random.seed(0)
    np.random.seed(0)
    mnist1d(120, seed=11)
    assert random.random() == random.Random(0).random()
    assert np.random.rand() == np.random.RandomState(0).rand()


def test_mnist1d_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_samples"):
        mnist1d(5)


def test_batches_cover_each_epoch_once():
    x = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in batches(x, y, 5, 2, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(x, y, 11, 1, torch.Generator()))
