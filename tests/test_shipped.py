"""The files shipped in checkpoints/: small, safe to load. var_cpu.pt is what sample.py uses when you have
no run; perceptual_cpu.pt the CIFAR-10 classifier of the perceptual loss, which notebook 04 uses to judge samples."""
import os

import torch

from minivar.applications.editing import edit
from minivar.data import load_cifar10, to_float
from minivar.quantizer import flatten_scales, split_scales
from minivar.training.checkpoint import export_for_sampling, generator_from_checkpoint, load_checkpoint
from minivar.training.workspace import SHIPPED, SHIPPED_CLASSIFIER, shipped_classifier
from tests.conftest import ROOT, run_script, write_fake_cifar


def shipped():
    ckpt = load_checkpoint(SHIPPED)  # weights_only=True inside, like every checkpoint the project reads
    return ckpt, *generator_from_checkpoint(ckpt, SHIPPED, torch.device("cpu"))


def test_the_shipped_checkpoint_is_one_small_half_precision_file():
    assert SHIPPED.is_file(), "checkpoints/var_cpu.pt is part of the repository"
    assert SHIPPED.stat().st_size <= 16 * 2**20
    ckpt = torch.load(SHIPPED, weights_only=True)
    assert ckpt["kind"] == "var" and "optimizer" not in ckpt
    weights = [t for part in ("model", "tokenizer") for t in ckpt[part].values() if t.is_floating_point()]
    assert weights and all(t.dtype == torch.float16 for t in weights)


def test_export_leaves_out_the_folders_of_the_machine_that_trained(tmp_path):
    ckpt = torch.load(SHIPPED, weights_only=True)
    assert not {"data_dir", "out_dir", "tokenizer", "perceptual"} & set(ckpt["train_config"])
    full = {**ckpt, "train_config": {**ckpt["train_config"], "data_dir": "/home/someone/data", "out_dir": "runs/a",
                                     "tokenizer": "/home/someone/tok.pt", "perceptual": ""}}
    torch.save(full, tmp_path / "var.pt")
    export_for_sampling(tmp_path / "var.pt", tmp_path / "small.pt", {"cfg_scale": 2.0})
    small = load_checkpoint(tmp_path / "small.pt")
    assert small["train_config"] == ckpt["train_config"] and small["sampling"] == {"cfg_scale": 2.0}


def test_it_carries_valid_sampling_defaults():
    ckpt, _, _ = shipped()
    sampling = ckpt["sampling"]
    assert set(sampling) == {"cfg_scale", "top_k", "top_p", "temperature"}
    assert sampling["cfg_scale"] >= 0 and sampling["top_k"] >= 0 and 0 < sampling["top_p"] <= 1
    assert sampling["temperature"] > 0


def test_it_samples_and_decodes_images_in_range():
    ckpt, model, tok = shipped()
    labels = torch.arange(10)
    idx_list = model.generate(tok.quantizer, labels, generator=torch.Generator().manual_seed(0), **ckpt["sampling"])
    assert [tuple(m.shape) for m in idx_list] == [(10, s, s) for s in tok.cfg.scales]
    images = tok.decode(idx_list).float()
    assert images.shape == (10, 3, 32, 32) and images.isfinite().all()
    assert images.std(dim=(1, 2, 3)).min() > 0.05  # pictures, not flat fields


def test_editing_keeps_every_token_outside_the_box():
    ckpt, model, tok = shipped()
    pixels = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    image = to_float(pixels)
    result = edit(model, tok, image.expand(2, -1, -1, -1), torch.tensor([3, 5]), (8, 8, 24, 24), "inpaint",
                  generator=torch.Generator().manual_seed(0), **ckpt["sampling"])
    keep_L, source_BL, drawn_BL = result.keep_L, flatten_scales(tok.encode(image)).expand(2, -1), result.tokens_BL
    assert result.images.shape == (2, 3, 32, 32) and 0 < keep_L.sum() < len(keep_L)
    assert torch.equal(drawn_BL[:, keep_L], source_BL[:, keep_L])  # what edit() returned keeps the source
    assert not torch.equal(drawn_BL[:, ~keep_L], source_BL[:, ~keep_L])  # and the box was redrawn
    assert torch.allclose(result.images, tok.decode(split_scales(drawn_BL, tok.cfg.scales)))  # the images are those tokens


def test_sample_py_with_no_run_uses_the_shipped_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIVAR_")}
    result = run_script(ROOT / "sample.py", "--classes", "cat,ship", "--n-per-class", "2", "--out",
                        tmp_path / "grid.png", env=env, cwd=tmp_path)  # no out/ here
    assert result.returncode == 0, result.stderr
    assert "var_cpu.pt" in result.stdout and (tmp_path / "grid.png").is_file()
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    for extra in (["--reject", "2"], ["--edit", "inpaint", "--image", "3", "--data-dir", tmp_path / "data"]):
        result = run_script(ROOT / "sample.py", "--classes", "cat", "--n-per-class", "2", "--out",
                            tmp_path / "more.png", *extra, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr


def test_the_shipped_classifier_is_one_small_file_read_as_data():
    """checkpoints/perceptual_cpu.pt: `python train.py --stage perceptual --preset cpu`, exported without its
    optimizer state or the folders of the machine that trained it (python -m minivar.training.checkpoint)."""
    assert SHIPPED_CLASSIFIER.stat().st_size < 2 * 2**20
    ckpt = torch.load(SHIPPED_CLASSIFIER, weights_only=True)
    assert ckpt["kind"] == "perceptual" and "optimizer" not in ckpt and ckpt["train_config"]["preset"] == "cpu"
    assert not {"data_dir", "out_dir", "tokenizer", "perceptual"} & set(ckpt["train_config"])
    net = shipped_classifier()  # load_checkpoint: checked whole, weights_only=True
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        logits = net(x)
        alone = net(x[:1])
    assert logits.shape == (6, 10) and logits.isfinite().all() and not net.training
    assert torch.allclose(alone, logits[:1], atol=1e-5)  # frozen: an image's verdict does not depend on its batch


def test_the_shipped_classifier_recognises_real_test_images(real_cifar):
    """73.3% of the first 2,000 test images when it was trained (train.py's evaluation), 72.6% of all 10,000."""
    images, labels = load_cifar10(real_cifar, "test")
    with torch.no_grad():
        predicted = shipped_classifier()(to_float(images[:1000])).argmax(1)
    assert (predicted == labels[:1000]).float().mean() > 0.70
