"""Bad input: the suite's own errors are one line and exit 2, anything else keeps its traceback; config
values are checked before any training; every row of the bad-input table in docs/results.md has a test.

Rows already covered by a test elsewhere are referenced from the table (by test id), not repeated here.
"""

from __future__ import annotations

import os
import re

import pytest
from helpers import ROOT, tiny_overrides

from ssl_bench import errors

SUITE_ERRORS = [errors.ConfigError, errors.DataError, errors.MissingDataError, errors.OutputExistsError,
                errors.CheckpointError, errors.StorageError, errors.TrainingStopped, errors.BusyError]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _raiser(error: BaseException):
    def run(*args, **kwargs):
        raise error
    return run


# ---------------------------------------------------------------------------------------- error kinds


@pytest.mark.parametrize("kind", SUITE_ERRORS, ids=lambda k: k.__name__)
def test_suite_error_in_a_hydra_job_is_one_line_and_exit_2(kind, tmp_path, run_cli, capsys, monkeypatch):
    import ssl_bench.runs.pretrain as pretrain
    monkeypatch.setattr(pretrain, "pretrain", _raiser(kind("data.root=/x: what went wrong")))
    code = run_cli("pretrain", f"hydra.run.dir={tmp_path}/run")
    err = _lines(capsys.readouterr().err)
    assert code == 2 and err == ["ssl-bench: error: data.root=/x: what went wrong"]


@pytest.mark.parametrize("kind", SUITE_ERRORS, ids=lambda k: k.__name__)
def test_suite_error_in_a_plain_command_is_one_line_and_exit_2(kind, run_cli, capsys, monkeypatch):
    import ssl_bench.runs.leaderboard as plain
    monkeypatch.setattr(plain, "main", _raiser(kind("--out: what went wrong")))
    code = run_cli("leaderboard", "x")
    assert code == 2 and _lines(capsys.readouterr().err) == ["ssl-bench: error: --out: what went wrong"]


@pytest.mark.parametrize("bug", [ValueError("bug"), FileNotFoundError("bug"), KeyError("bug")],
                         ids=lambda e: type(e).__name__)
def test_a_bug_in_a_hydra_job_keeps_its_traceback_and_is_not_exit_2(bug, tmp_path, run_cli, capsys, monkeypatch):
    import ssl_bench.runs.pretrain as pretrain
    monkeypatch.setattr(pretrain, "pretrain", _raiser(bug))
    code = run_cli("pretrain", f"hydra.run.dir={tmp_path}/run")
    err = capsys.readouterr().err
    assert code not in (0, 2)
    assert "Traceback" in err and f"{type(bug).__name__}" in err and "ssl-bench: error:" not in err


def test_a_bug_in_a_plain_command_propagates(run_cli, monkeypatch):
    import ssl_bench.runs.leaderboard as plain
    monkeypatch.setattr(plain, "main", _raiser(ValueError("bug")))
    with pytest.raises(ValueError, match="bug"):
        run_cli("leaderboard", "x")


def test_suite_errors_still_are_the_builtin_errors_callers_caught():
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.DataError, ValueError)
    assert issubclass(errors.MissingDataError, FileNotFoundError) and issubclass(errors.StorageError, OSError)
    from ssl_bench.data.images import DataLayoutError, ImageReadError
    from ssl_bench.models.checkpoint import CheckpointMismatchError
    from ssl_bench.pretext.callbacks import CheckpointWriteError
    for kind in (DataLayoutError, ImageReadError, CheckpointMismatchError, CheckpointWriteError):
        assert issubclass(kind, errors.SuiteError)
    assert issubclass(CheckpointMismatchError, errors.CheckpointError)
    e = ImageReadError(13, "x.png: permission denied")
    assert e.errno == 13


# ------------------------------------------------------------------------------------ config values


@pytest.mark.parametrize("overrides,named,expected", [
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'", "an integer >= -1"),
    (["trainer.max_steps=1.5"], "trainer.max_steps=1.5", "an integer >= -1"),
    (["data.crop_size=-5"], "data.crop_size=-5", "a positive number of pixels"),
    (["data.batch_size=0"], "data.batch_size=0", "a positive integer"),
    (["data.num_workers=-1"], "data.num_workers=-1", "an integer >= 0"),
    (["seed=abc"], "seed='abc'", "an integer >= 0"),
    (["optimizer.lr=0"], "optimizer.lr=0", "a positive learning rate"),
    (["optimizer.lr=nan"], "optimizer.lr=nan", "a positive learning rate"),
    (["data=folder", "data.val_fraction=1.5"], "data.val_fraction=1.5", "a fraction in (0, 1)"),
    (["trainer.max_epoch=1"], "'trainer.max_epoch'", "+trainer.max_epoch=1"),   # misspelt key
    (["pretext=colourization"], "pretext/colourization", "colorization"),       # misspelt option
])
def test_bad_config_value_is_one_line_naming_the_key_before_training(overrides, named, expected, tiny_data,
                                                                     tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    code = run_cli("pretrain", *tiny_overrides(tiny_data, out, tmp_path / "cache"), *overrides)
    err = _lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and err[0].startswith("ssl-bench: error: "), err
    assert named in err[0] and expected in err[0], err[0]
    assert not (out / "checkpoints").exists() and not (out / "results.json").exists()


@pytest.mark.parametrize("sweep", [["-m", "seed=0,1", "trainer.max_epoch=1"],
                                   ["--multirun", "pretext=colorization,colourization"]])
def test_misspelt_key_or_option_in_a_sweep_is_one_line_before_any_job(sweep, tmp_path, run_cli, capsys):
    code = run_cli("pretrain", *sweep, f"hydra.sweep.dir={tmp_path}/sweep")
    err = _lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and err[0].startswith("ssl-bench: error: "), err
    assert ("trainer.max_epoch" in err[0] or "colourization" in err[0]) and not (tmp_path / "sweep").exists()


def test_sweep_check_tries_every_swept_value_once_and_leaves_hydra_settings_out():
    from ssl_bench.runs.jobs import sweep_lines
    assert sweep_lines(["-m", "seed=0,1", "init=gaussian,kraehenbuehl", "hydra/launcher=slurm",
                        "hydra.sweep.dir=x", "+a.b=range(3,5)", "c=1"]) == [
        ["seed=0", "init=gaussian", "+a.b=3", "c=1"], ["seed=1", "init=gaussian", "+a.b=3", "c=1"],
        ["seed=0", "init=kraehenbuehl", "+a.b=3", "c=1"], ["seed=0", "init=gaussian", "+a.b=4", "c=1"]]


def test_check_value_accepts_the_defaults_and_null_where_allowed():
    from ssl_bench.config import check_value, compose, validate
    for name in ("pretrain", "probe_run", "finetune", "colorization_eval"):
        validate(compose(name))
    assert check_value("data.load_size", None) is None and check_value("trainer.max_epochs", -1) is None
    assert check_value("data.crop_size", None) == "data.crop_size=null: expected a positive number of pixels"
    assert check_value("seed", True) is not None   # a boolean is not a seed
    assert check_value("data.val_fraction", 0) is not None and check_value("data.val_fraction", 0.5) is None


def test_all_unreadable_folder_is_one_line_naming_the_folder(tmp_path, run_cli, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        (folder / f"img{i}.jpg").write_text("not an image")
    code = run_cli("pretrain", "data=folder", f"data.root={folder}", "data.num_workers=0",
                   f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={tmp_path}/run", "trainer.max_epochs=1")
    err = _lines(capsys.readouterr().err)
    errs = [line for line in err if line.startswith("ssl-bench: error:")]
    assert code == 2 and len(errs) == 1 and str(folder) in errs[0] and "Traceback" not in "\n".join(err), err


# ------------------------------------------------------------------------------ table rows tested here


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: root reads a chmod 000 file, so the permission error cannot "
                           "happen here (the EACCES path is also covered with a patched open in "
                           "tests/data/test_images.py::test_io_error_is_retried_then_an_error_naming_the_file)")
def test_unreadable_file_is_an_error_naming_it(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import ssl_bench.data.images as im
    monkeypatch.setattr(im, "IO_RETRY_DELAY_S", 0.0)
    path = tmp_path / "locked.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(im.ImageReadError, match="locked.png") as e:
            im.ImageDataset([(path, 0)])[0]
    finally:
        path.chmod(0o644)
    assert isinstance(e.value, errors.SuiteError) and not isinstance(e.value, im.DECODE_ERRORS)


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_data, tmp_path_factory):
    from ssl_bench.cli import main
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    try:
        main(["pretrain", *tiny_overrides(tiny_data, out, out.parent / "cache"), "trainer.limit_train_batches=2",
              "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0"])
    except SystemExit as e:
        assert not e.code
    return out / "checkpoints" / "last.ckpt"


def test_truncated_checkpoint_is_one_line_naming_the_file(tiny_ckpt, tiny_data, tmp_path, run_cli, capsys):
    cut = tmp_path / "cut.ckpt"
    data = tiny_ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "probe"
    code = run_cli("probe", f"checkpoint={cut}", f"data.root={tiny_data}", "data.synthetic=null",
                   "data.num_workers=0", f"paths.cache_dir={tmp_path}/cache", f"hydra.run.dir={out}",
                   "backbone.widths=[16,32,48,48,32]", "backbone.fc_channels=64")
    err = _lines(capsys.readouterr().err)
    assert code == 2 and len(err) == 1 and str(cut) in err[0] and "not a readable torch file" in err[0], err
    assert not (out / "results.json").exists()


# ------------------------------------------------------------------------- the table in the docs


def bad_input_table() -> list[dict[str, str]]:
    """The rows of the bad-input table in docs/results.md, as {column: cell}."""
    text = (ROOT / "docs" / "results.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in r.strip("|").split("|")))) for r in rows[2:]]


# the inputs the table must cover (issue: "test each row"), each with words that find its row
REQUIRED_ROWS = ["truncated JPEG", "PNG with alpha", "CMYK", "16-bit", "greyscale JPEG", "1 x 1 image",
                 "decompression bomb", "text file named .jpg", "empty class folder", "unreadable file",
                 "without `<difficult>`", "box partly outside", "RGB instead of palette", "truncated checkpoint",
                 "another architecture", "misspelt config key", "disk fills up", "bad config value",
                 "all-unreadable folder"]


def test_every_table_row_names_its_exit_status_what_is_kept_and_an_existing_test():
    rows = bad_input_table()
    assert set(rows[0]) == {"input", "what happens", "exit", "kept", "test"}
    for needle in REQUIRED_ROWS:
        assert any(needle in r["input"] for r in rows), f"no bad-input row for {needle!r}"
    for r in rows:
        assert r["exit"] and r["kept"], r["input"]
        ids = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", r["test"])
        assert ids, f"row {r['input']!r} names no test"
        for file, name in ids:
            source = (ROOT / file).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{file}::{name} (row {r['input']!r}) does not exist"
