"Data pipeline: worker processes, reproducible seeding, evaluation box round trip, the synthetic dataset cache."

import pytest
import torch
from torch.utils.data import DataLoader

from yolo_voc.boxes import cxcywh_to_xyxy, unletterbox_boxes
from yolo_voc.data import EpochSampler, VOCDataModule, VOCDataset, collate, synthetic_dataset
from yolo_voc.loss import encode_targets
from yolo_voc.synthetic import make_synthetic_voc
from yolo_voc.voc import DatasetError, load_annotations

SIZE = 128


@pytest.fixture(scope="module")
def anns(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_synthetic_voc(root, n_images=24, image_size=(200, 150), seed=3)
    return load_annotations(root, split="trainval")


def _batches(ds, workers, epochs=2, batch_size=4):
    "All batches of `epochs` epochs through a DataLoader with an `EpochSampler`."
    sampler = EpochSampler(len(ds), shuffle=True, seed=7)
    dl = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                    persistent_workers=workers > 0)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append([(x.clone(), t.clone(), [i["index"] for i in info]) for x, t, info in dl])
    return out


def test_workers_reproducible_and_epochs_differ(anns):
    ds = VOCDataset(anns, size=SIZE, train=True, seed=1)
    single = _batches(ds, workers=0)
    multi = _batches(ds, workers=2)
    for e0, e1 in zip(single, multi):
        assert len(e0) == len(e1) == -(-len(anns) // 4)
        for (x0, t0, i0), (x1, t1, i1) in zip(e0, e1):
            assert i0 == i1
            assert torch.equal(x0, x1) and torch.equal(t0, t1)
    # a new epoch: another order and other augmentations of the same image
    assert [b[2] for b in single[0]] != [b[2] for b in single[1]]
    first = single[0][0][2][0]
    assert not torch.equal(ds[(first, 0)][0], ds[(first, 1)][0])
    x, t, _ = single[0][0]
    assert x.shape == (4, 3, SIZE, SIZE) and x.dtype == torch.float32 and t.shape[1] == 6
    assert 0 <= x.min() and x.max() <= 1


def test_eval_boxes_round_trip(anns):
    ds = VOCDataset(anns, size=SIZE, train=False)
    dl = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate)
    n = 0
    for images, targets, infos in dl:
        for k, info in enumerate(infos):
            t = targets[targets[:, 0] == k]
            px = cxcywh_to_xyxy(t[:, 2:]) * SIZE  # letterboxed pixels
            torch.testing.assert_close(unletterbox_boxes(px, info["letterbox"]), info["boxes"], atol=2e-3, rtol=0)
            assert torch.equal(t[:, 1].long(), info["labels"])
            assert info["difficult"].dtype == torch.bool and len(info["difficult"]) == len(info["labels"])
            n += len(t)
    assert n == sum(len(a.labels) for a in anns)  # evaluation keeps every box


def test_targets_encode(anns):
    ds = VOCDataset(anns, size=SIZE, train=True, seed=0)
    images, targets, _ = collate(ds.__getitems__(list(range(8))))
    grids = encode_targets(targets, 8, SIZE)
    assert [tuple(g.shape) for g in grids] == [(8, 3, SIZE // s, SIZE // s, 6) for s in (32, 16, 8)]
    assigned = sum(int((g[..., 0] == 1).sum()) for g in grids)
    assert 0 < assigned <= 3 * len(targets)


def test_corrupt_image_names_file(anns, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    recs = list(anns[:4])
    recs[0] = type(recs[0])(**{**recs[0].__dict__, "image_path": bad})
    ds = VOCDataset(recs, size=SIZE, train=True, mosaic_prob=1.0)
    with pytest.raises(DatasetError, match="broken.jpg"):
        ds.__getitems__([0, 1, 2, 3])
    with pytest.raises(DatasetError, match="broken.jpg"):
        VOCDataset(recs, size=SIZE, train=False)[0]


def test_datamodule_synthetic_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path / "cache"))
    kw = dict(root=None, image_size=SIZE, batch_size=4, num_workers=2, synthetic_images=16,
              synthetic_image_size=(160, 120))
    dm = VOCDataModule(**kw)
    dm.prepare_data()
    folder = dm.dataset_root()
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("synthetic-")
    stamp = (folder / "params.json").stat().st_mtime_ns
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no temporary folder left
    dm.setup("fit")
    images, targets, infos = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, SIZE, SIZE) and targets.shape[1] == 6
    images, targets, infos = next(iter(dm.val_dataloader()))
    assert "letterbox" in infos[0]
    assert dm.num_classes == 20 and dm.hparams.num_workers == 2
    # a second module with the same parameters reuses the cached dataset; other parameters make another one
    dm2 = VOCDataModule(**kw)
    dm2.prepare_data()
    assert dm2.dataset_root() == folder and (folder / "params.json").stat().st_mtime_ns == stamp
    other = synthetic_dataset(8, (160, 120), seed=1)
    assert other != folder and other.parent == folder.parent


def test_datamodule_uint8_and_multiscale(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_VOC_CACHE", str(tmp_path / "cache"))
    dm = VOCDataModule(root=None, image_size=SIZE, batch_size=4, num_workers=0, synthetic_images=12,
                       synthetic_image_size=(160, 120), uint8_images=True, multiscale=True)
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].dtype == torch.uint8
    images, targets, _ = dm.on_after_batch_transfer(batch, 0)  # no trainer: float only, no resize
    assert images.dtype == torch.float32 and images.shape[-1] == SIZE and images.max() <= 1
