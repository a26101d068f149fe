"""Image-folder data, transforms, the timm backbone (freezing, offline weights) and restore modes: unit tests."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainflow.data.image_folder import ImageFolderDataModule
from trainflow.data.make_digit_images import write_digit_images
from trainflow.errors import ConfigError, DataError

TINY = "test_resnet"  # timm's ~0.4M-parameter test network: stem, layer1..4, fc


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def mixed_folder(root: Path) -> Path:
    """3 classes; grayscale, RGB, RGBA and palette images of different sizes; suffixes in any case; noise files."""
    rng = np.random.default_rng(0)
    shapes = [(10, 12), (20, 16), (8, 8), (31, 17)]
    for c, name in enumerate(["cat", "dog", "owl"]):
        folder = root / name
        (folder / "nested").mkdir(parents=True)
        for i in range(6):
            w, h = shapes[i % 4]
            pixels = rng.integers(0, 255, (h, w, 4), dtype=np.uint8)
            image = [Image.fromarray(pixels[..., 0]), Image.fromarray(pixels[..., :3]), Image.fromarray(pixels),
                     Image.fromarray(pixels[..., :3]).convert("P")][(i + c) % 4]
            suffix, fmt = [(".png", "PNG"), (".JPG", "JPEG"), (".PNG", "PNG"), (".jpeg", "JPEG")][i % 4]
            if fmt == "JPEG" and image.mode in ("RGBA", "P"):
                image = image.convert("RGB")
            target = folder / "nested" if i == 5 else folder
            (target / f"{name}{i}{suffix}").write_bytes(png(image, fmt))
        (folder / "notes.txt").write_text("not an image")
        (folder / ".hidden.png").write_bytes(b"ignored: hidden")
    return root


def same_image_rows(image: bytes, count: int):
    """A mapped split of `count` copies of one image, as setup() would read it."""
    import tempfile

    import pyarrow as pa

    from trainflow.data.dataset import DatasetWriter
    from trainflow.data.image_folder import SCHEMA
    from trainflow.data.mapped import open_split

    folder = Path(tempfile.mkdtemp(prefix="same-image-"))
    writer = DatasetWriter(folder, SCHEMA)
    writer.write("train", pa.table({"file": ["same.png"] * count, "image": [image] * count, "label": [0] * count},
                                   schema=SCHEMA))
    writer.close(task="t", source="s")
    return open_split(folder, "train")


def module(root: Path | None = None, **kwargs) -> ImageFolderDataModule:
    kwargs.setdefault("image_size", 16)
    kwargs.setdefault("val_fraction", 0.2)
    kwargs.setdefault("test_fraction", 0.2)
    kwargs.setdefault("batch_size", 8)
    return ImageFolderDataModule(root=str(root) if root else None, **kwargs)


def test_mixed_modes_and_sizes_pack_into_one_dataset_and_batch(tmp_path) -> None:
    dm = module(mixed_folder(tmp_path / "images"))
    manifest = dm.build_dataset(tmp_path / "ds")
    assert manifest.label_names == ["cat", "dog", "owl"]
    assert sum(manifest.splits.values()) == 18 and manifest.splits["val"] == manifest.splits["test"] == 3
    assert manifest.extra["layout"] == "class_folders" and manifest.extra["skipped_images"] == 0
    assert set(manifest.extra["modes"]) == {"L", "RGB", "RGBA", "P"}
    assert manifest.extra["min_size"] == [8, 8] and manifest.extra["max_size"] == [31, 17]
    dm.uri = str(tmp_path / "ds")
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    names = {dm.splits[s].name(i) for s in ("train", "val", "test") for i in range(len(dm.splits[s]))}
    assert "cat/nested/cat5.JPG" in names
    assert dm.model_kwargs() == {"num_classes": 3, "label_names": ["cat", "dog", "owl"]}
    # the same folder and seed give the same splits, byte for byte
    again = module(tmp_path / "images").build_dataset(tmp_path / "ds2")
    assert again.digest == manifest.digest


def test_train_val_test_folders_are_taken_as_split_and_a_missing_val_is_drawn_from_train(tmp_path) -> None:
    write_digit_images(tmp_path / "d" / "train", size=8, per_class=5)
    write_digit_images(tmp_path / "d" / "test", size=8, per_class=2)
    manifest = module(tmp_path / "d").build_dataset(tmp_path / "ds")
    assert manifest.extra["layout"] == "split_folders"
    assert manifest.splits == {"train": 40, "val": 10, "test": 20}  # val: 1 of 5 per class (0.2)


def test_a_corrupt_image_fails_naming_the_file_and_writes_nothing(tmp_path) -> None:
    root = mixed_folder(tmp_path / "images")
    (root / "dog" / "broken.png").write_bytes(png(Image.new("RGB", (20, 20)))[:40])  # truncated
    with pytest.raises(DataError, match=r"dog/broken\.png.*on_bad_image=skip"):
        module(root).build_dataset(tmp_path / "ds")
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_skip_leaves_bad_images_out_and_counts_them(tmp_path, caplog) -> None:
    root = mixed_folder(tmp_path / "images")
    (root / "dog" / "broken.png").write_bytes(png(Image.new("RGB", (20, 20)))[:40])
    (root / "owl" / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        manifest = module(root, on_bad_image="skip").build_dataset(tmp_path / "ds")
    assert sum(manifest.splits.values()) == 18
    assert manifest.extra["skipped_images"] == 2 and manifest.extra["metrics"] == {"data/skipped_images": 2}
    assert sorted(manifest.extra["skipped_files"]) == ["dog/broken.png", "owl/empty.jpg"]
    assert "skipped 2 unreadable image(s)" in caplog.text
    with pytest.raises(ConfigError, match="on_bad_image"):
        module(root, on_bad_image="ignore")


def test_train_transform_augments_and_eval_transform_is_deterministic(compose, tmp_path) -> None:
    """With the real experiment config: every split but train gets the eval transform."""
    from hydra.utils import instantiate

    write_digit_images(tmp_path / "d", size=16, per_class=4)
    cfg = compose("train", ["experiment=digits_images_tiny", f"data.root={tmp_path / 'd'}",
                            "data.train_transform.transforms.1.p=1.0"], output_dir=tmp_path / "out")
    dm = instantiate(cfg.data, _convert_="all")
    dm.build_dataset(tmp_path / "ds")
    dm.uri = str(tmp_path / "ds")
    dm.setup("fit")
    for split in ("val", "test"):
        assert torch.equal(dm.splits[split][0][0], dm.splits[split][0][0]), split
    draws = [dm.splits["train"][0][0] for _ in range(4)]
    assert not all(torch.equal(draws[0], d) for d in draws[1:])
    assert draws[0].shape == dm.splits["val"][0][0].shape == (3, 16, 16)


def test_freeze_fraction_freezes_exactly_the_first_layers_and_keeps_their_batchnorm_in_eval() -> None:
    from trainflow.models.components.timm_backbone import TIMMBackbone

    net = TIMMBackbone(TINY, num_classes=3, freeze_encoder=0.5)
    names = [n for n, _ in net.model.named_parameters()]
    # 5 encoder layers (stem, layer1..4); half, rounded down, is the stem and layer1
    expected = {n for n in names if n.startswith(("conv1.", "bn1.", "layer1."))}
    assert net.frozen_layers == 2 and len(net.layers) == 5
    assert {n for n, p in net.model.named_parameters() if not p.requires_grad} == expected
    assert not net.model.bn1.training  # from the start: Lightning keeps the modes it finds
    net.train()
    assert not net.model.bn1.training and not net.model.layer1[0].bn1.training
    assert net.model.layer2[0].bn1.training
    assert {n for n, p in TIMMBackbone(TINY, num_classes=3, freeze_encoder=True).model.named_parameters()
            if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert all(p.requires_grad for p in TIMMBackbone(TINY, num_classes=3, freeze_encoder=False).parameters())
    with pytest.raises(ConfigError, match="freeze_encoder"):
        TIMMBackbone(TINY, num_classes=3, freeze_encoder=1.5)


def test_frozen_parameters_stay_out_of_the_optimizer() -> None:
    from functools import partial

    from trainflow.models.components.timm_backbone import TIMMBackbone
    from trainflow.models.image_classifier import ImageClassificationModule

    net = TIMMBackbone(TINY, num_classes=3, freeze_encoder=0.5)
    model = ImageClassificationModule(net, partial(torch.optim.AdamW, lr=1e-3), num_classes=3)
    optimizer = model.configure_optimizers()["optimizer"]
    in_optimizer = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert in_optimizer == model.trainable_params == net.num_trainable_params < model.count_params()


def test_pretrained_from_a_local_file_reproduces_its_weights(tmp_path) -> None:
    from trainflow.models.components.timm_backbone import TIMMBackbone

    torch.manual_seed(1)
    source = TIMMBackbone(TINY, num_classes=3)
    torch.save(source.model.state_dict(), tmp_path / "plain.pth")
    # a Lightning checkpoint of a ClassificationModule: keys `net.model.…`
    torch.save({"state_dict": {f"net.{k}": v for k, v in source.state_dict().items()}, "epoch": 3},
               tmp_path / "run.ckpt")
    for name in ("plain.pth", "run.ckpt"):
        net = TIMMBackbone(TINY, num_classes=3, pretrained=str(tmp_path / name))
        assert not torch.equal(net.model.fc.weight, source.model.fc.weight)  # loaded when fit starts, not before
        net.load_pretrained()
        for key, value in source.model.state_dict().items():
            assert torch.equal(net.model.state_dict()[key], value), (name, key)
    # other classes: the encoder loads, the classifier starts fresh
    other = TIMMBackbone(TINY, num_classes=5, pretrained=str(tmp_path / "plain.pth"))
    other.load_pretrained()
    assert torch.equal(other.model.conv1[0].weight, source.model.conv1[0].weight)
    with pytest.raises(ConfigError, match="pretrained=/path/to/weights"):
        TIMMBackbone(TINY, num_classes=3, pretrained=True)
    with pytest.raises(ConfigError, match="does not fit"):
        TIMMBackbone("resnet10t", num_classes=3, pretrained=str(tmp_path / "plain.pth")).load_pretrained()


def test_restore_modes_table() -> None:
    from omegaconf import OmegaConf

    from trainflow.training.restore import LoadWeights, fit_start, restore_mode

    class FakeTrainer:
        def __init__(self) -> None:
            self.callbacks: list = []

    def cfg(**kw):
        return OmegaConf.create({"ckpt_path": None, "resume": None, "only_weights_load": False, **kw})

    assert restore_mode(cfg()) == "none"
    assert restore_mode(cfg(ckpt_path="a.ckpt")) == "full"
    assert restore_mode(cfg(ckpt_path="a.ckpt", only_weights_load=True)) == "weights_only"
    with pytest.raises(ConfigError, match="needs ckpt_path"):
        restore_mode(cfg(only_weights_load=True))
    trainer = FakeTrainer()
    assert fit_start(cfg(ckpt_path="a.ckpt"), Path("a.ckpt"), trainer) == Path("a.ckpt")
    assert fit_start(cfg(ckpt_path="a.ckpt", only_weights_load=True), Path("a.ckpt"), trainer) is None
    assert [type(c) for c in trainer.callbacks] == [LoadWeights]


def module_level_imports(name: str, seen: set[str] | None = None) -> set[str]:
    """Every module imported at module level (not inside functions) from `name`, following trainflow's own."""
    import ast
    import importlib.util

    seen = set() if seen is None else seen
    spec = importlib.util.find_spec(name)
    if name in seen or spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return seen
    seen.add(name)
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.Import | ast.ImportFrom) and not (isinstance(node, ast.ImportFrom) and node.level):
            for target in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]):
                seen.add(target)
                if target.startswith("trainflow"):
                    module_level_imports(target, seen)
    return seen


def test_digits_and_image_data_import_neither_timm_nor_albumentations() -> None:
    """Start-up time: the digits path never pays for timm/albumentations; image data imports them in setup()."""
    for name in ("trainflow.data.digits", "trainflow.data.image_folder", "trainflow.models.image_classifier"):
        heavy = {m for m in module_level_imports(name) if m.split(".")[0] in ("timm", "albumentations", "mlflow")}
        assert not heavy, (name, heavy)


def test_dataloader_workers_draw_different_augmentations() -> None:
    """Forked workers inherit one albumentations generator; without reseeding they would augment alike."""
    from torch.utils.data import DataLoader

    from trainflow.data.image_folder import EncodedImages
    from trainflow.data.images import build_transform

    transform = build_transform({"_target_": "albumentations.Compose", "transforms": [
        {"_target_": "albumentations.Affine", "rotate": [-30, 30], "translate_percent": [-0.2, 0.2], "p": 1.0},
        {"_target_": "albumentations.Normalize"}]})
    image = png(Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)))
    dataset = EncodedImages(same_image_rows(image, 4), transform)
    torch.manual_seed(0)
    batches = [x for x, _ in DataLoader(dataset, batch_size=1, num_workers=2)]  # items 0, 2 -> worker 0; 1, 3 -> 1
    assert not torch.equal(batches[0], batches[1])
    assert not torch.equal(batches[0], batches[2])


def test_an_image_added_to_the_folder_changes_prepare_datas_cache_inputs(tmp_path) -> None:
    from trainflow.pipeline.cache import source_inputs

    write_digit_images(tmp_path / "d", size=8, per_class=2)
    resolved = {"data": {"root": str(tmp_path / "d"), "batch_size": 8, "uri": None}}
    before = source_inputs(resolved)
    assert before == source_inputs(resolved) and set(before) == {"source"}
    (tmp_path / "d" / "3" / "new.png").write_bytes(png(Image.new("L", (8, 8))))
    assert source_inputs(resolved) != before
    assert source_inputs({"data": {"val_fraction": 0.15, "seed": 1}}) == {}  # digits: keys as before


def test_hub_weights_fail_when_the_config_is_checked_before_any_data_is_read(compose, tmp_path) -> None:
    from trainflow.config.validate import check_targets

    cfg = compose("train", ["experiment=digits_images_tiny", "model.net.pretrained=true"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^model\.net\.pretrained=true would download weights .* pass a file"):
        check_targets(cfg)
