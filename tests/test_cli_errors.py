"""Usage errors and band choices: one line on stderr, ``segflow: error: ...``, exit code 2.

The CLI runs in this process through :func:`segflow.cli.main`, exactly as the ``segflow``
entry point calls it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segflow.cli import main

from .helpers import make_ts_package, random_image, write_geotiff


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(capsys: pytest.CaptureFixture[str], args: list[str | Path], *needles: str) -> str:
    code, out, err = run(capsys, *args)
    lines = err.splitlines()
    assert code == 2, err
    assert out == ""
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("segflow: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("args", "needles"), [
    pytest.param(["run", "tile-infer", "-i", "x.tif", "--blend", "triangle"],
                 ["--blend: 'triangle' is not one of", "gaussian", "cosine", "constant",
                  "see 'segflow run tile-infer --help'"], id="bad-choice"),
    pytest.param(["run", "tile-infer", "-i", "x.tif", "--tile", "abc"],
                 ["--tile: 'abc' is not a valid integer", "segflow run tile-infer --help"], id="bad-int"),
    pytest.param(["run", "tile-infer", "-i", "x.tif", "--overlap", "half"],
                 ["--overlap: 'half' is not a valid float"], id="bad-float"),
    pytest.param(["eval", "--pred", "p.tif", "--ignore", "water"],
                 ["--ignore: 'water' is not a valid integer", "segflow eval --help"], id="bad-int-multiple"),
    pytest.param(["models", "export", "pkg", "--format", "tflite", "-o", "x"],
                 ["--format: 'tflite' is not one of", "onnx", "torchscript"], id="bad-choice-subgroup"),
    pytest.param(["run", "tile-infer"], ["missing option --input [NAME=]PATH", "segflow run tile-infer --help"],
                 id="missing-option"),
    pytest.param(["eval", "--pred", "p.tif"], ["missing option --truth", "segflow eval --help"],
                 id="missing-option-2"),
    pytest.param(["sample-scene"], ["missing argument OUTPUT", "usage: segflow sample-scene [OPTIONS] OUTPUT"],
                 id="missing-argument"),
    pytest.param(["run", "tile-infer", "-i", "x.tif", "--bogus"],
                 ["unknown option --bogus", "segflow run tile-infer --help"], id="unknown-option"),
    pytest.param(["run", "tile-infer", "-i", "x.tif", "--blen", "cosine"],
                 ["unknown option --blen (did you mean --blend"], id="unknown-option-close"),
    pytest.param(["--verbose"], ["unknown option --verbose", "see 'segflow --help'"], id="unknown-top-option"),
    pytest.param(["run", "tile-infer", "-i", "x.tif", "--tile"],
                 ["option '--tile' requires an argument", "segflow run tile-infer --help"], id="option-no-value"),
    pytest.param(["sample-scene", "a.tif", "b.tif"],
                 ["unexpected extra argument (b.tif)", "usage: segflow sample-scene [OPTIONS] OUTPUT"],
                 id="extra-argument"),
    pytest.param(["tile-infer"],
                 ["unknown command 'tile-infer'", "demo, eval, models, run, sample-scene, serve, train"],
                 id="unknown-command"),
    pytest.param(["run", "tile-infr"], ["unknown command 'tile-infr' (did you mean 'tile-infer'?)",
                                        "commands of 'segflow run' are tile-infer"], id="unknown-subcommand"),
    pytest.param(["models", "shw", "x"], ["unknown command 'shw' (did you mean 'show'?)", "export, list, show"],
                 id="unknown-models-command"),
])
def test_every_usage_error_is_one_line_with_exit_2(capsys: pytest.CaptureFixture[str], args: list[str | Path],
                                                   needles: list[str]) -> None:
    assert_usage_error(capsys, args, *needles)


def test_the_entry_point_prints_the_same_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "segflow", "run", "tile-infer", "-i", "x.tif", "--blend", "triangle"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("segflow: error: --blend: 'triangle' is not one of 'gaussian', 'cosine', 'constant'; "
                           "see 'segflow run tile-infer --help'\n")


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["run", "tile-infer", "--help"], ["models", "export", "-h"],
                                  [], ["run"], ["models"]])
def test_help_and_a_bare_group_print_help_with_exit_0(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = run(capsys, *args)
    assert code == 0 and err == ""
    assert out.startswith("Usage: segflow") and "Options:" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from segflow import __version__

    assert run(capsys, "--version") == (0, f"segflow, version {__version__}\n", "")


def test_the_command_line_imports_no_heavy_library_until_a_command_runs() -> None:
    code = ("import sys, segflow.cli; heavy = {'torch', 'rasterio', 'dask', 'zarr', 'numpy', 'scipy'}; "
            "print(sorted(heavy & set(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- band choices: one rule


@pytest.fixture(scope="module")
def four_bands(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geotiff(tmp_path_factory.mktemp("bands") / "four.tif", random_image((4, 48, 40), seed=3))


@pytest.mark.parametrize("choice", ["nir=0", "nir=9", "nir=5", "nir=-1"])
def test_a_band_number_outside_the_raster_is_a_config_error_naming_its_band_count(
        capsys: pytest.CaptureFixture[str], four_bands: Path, tmp_path: Path, choice: str) -> None:
    number = choice.split("=")[1]
    line = assert_usage_error(capsys, ["run", "tile-infer", "-i", four_bands, "-o", tmp_path / "o", "--band", choice,
                                       "-m", "ndwi-water", "-q"],
                              f"--band nir={number} is not a band of", "four.tif", "it has 4 bands, numbered 1 to 4",
                              "--band nir=N with 1 <= N <= 4")
    assert "Traceback" not in line
    assert not (tmp_path / "o" / "labels.tif").exists()


@pytest.mark.parametrize("choice", ["nir=x", "nir", "=3", "nir=1.5"])
def test_a_malformed_band_choice_is_a_config_error(capsys: pytest.CaptureFixture[str], four_bands: Path,
                                                   tmp_path: Path, choice: str) -> None:
    assert_usage_error(capsys, ["run", "tile-infer", "-i", four_bands, "-o", tmp_path / "o", "--band", choice],
                       f"--band {choice!r} must look like NAME=N", "e.g. --band nir=4")


def test_a_band_choice_inside_the_raster_runs(capsys: pytest.CaptureFixture[str], four_bands: Path,
                                              tmp_path: Path) -> None:
    code, _, err = run(capsys, "run", "tile-infer", "-i", four_bands, "-o", tmp_path / "o", "-m", "ndwi-water",
                       "--band", "nir=4", "--band", "green=1", "--tile", "32", "-q")
    assert code == 0, err
    assert (tmp_path / "o" / "labels.tif").is_file()


def test_a_raster_with_too_few_bands_for_any_builtin_says_so_and_what_to_do(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from segflow.models import builtin_names, resolve_package

    specs = [resolve_package(n).spec for n in builtin_names()]
    assert not [s.name for s in specs if s.spatial_dims == 2 and len(s.input.bands) <= 1], "premise: none takes 1"
    one = write_geotiff(tmp_path / "one.tif", random_image((1, 40, 40)))
    for model in ("spectral-landcover", "ndwi-water"):
        wanted = [b.name for b in resolve_package(model).spec.input.bands]
        line = assert_usage_error(capsys, ["run", "tile-infer", "-i", one, "-o", tmp_path / "o", "-m", model],
                                  f"one.tif has 1 band but model '{model}' reads {len(wanted)} bands from it "
                                  f"({', '.join(wanted)})", "no built-in model fits a 1-band raster",
                                  "pass a model package that takes 1 band with --model PATH",
                                  "segflow models list")
        assert "--band" not in line, "no band choice can make one band into several"


def test_a_raster_with_fewer_bands_than_the_model_names_the_builtins_that_fit(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from segflow.models import builtin_names, resolve_package

    two = write_geotiff(tmp_path / "two.tif", random_image((2, 40, 40)))
    pkg = make_ts_package(tmp_path / "pkg", bands=3, classes=2, tile=32)
    fits = [n for n in builtin_names()
            if resolve_package(n).spec.spatial_dims == 2 and len(resolve_package(n).spec.input.bands) <= 2]
    assert fits, "premise: some built-in reads 2 bands"
    assert_usage_error(capsys, ["run", "tile-infer", "-i", two, "-o", tmp_path / "o", "-m", pkg],
                       "two.tif has 2 bands but model", "reads 3 bands", f"built-in {', '.join(fits)}")


def test_a_model_band_index_beyond_the_raster_asks_for_a_band_choice(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from segflow.models import resolve_package

    spec = resolve_package("ndwi-water").spec
    nir = next(b for b in spec.input.bands if b.name == "nir")
    assert nir.index is not None and nir.index > 2, "premise: ndwi-water reads nir from a band beyond 2"
    two = write_geotiff(tmp_path / "two.tif", random_image((2, 40, 40)))
    assert_usage_error(capsys, ["run", "tile-infer", "-i", two, "-o", tmp_path / "o", "-m", "ndwi-water"],
                       f"reads nir from band {nir.index} but", "two.tif has 2 bands",
                       "pick the nir band with --band nir=N (1 <= N <= 2)")
    code, _, err = run(capsys, "run", "tile-infer", "-i", two, "-o", tmp_path / "o", "-m", "ndwi-water",
                       "--band", "nir=2", "--band", "green=1", "--tile", "32", "-q")
    assert code == 0, err


def test_a_warning_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scene = write_geotiff(tmp_path / "s.tif", random_image((4, 64, 64), seed=2))
    code, _, err = run(capsys, "run", "tile-infer", "-q", "--input", scene, "--output", tmp_path / "o",
                         "--tile", "8", "--overlap", "0.9")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segflow: warning: overlap 0.9 makes 3249 windows"), lines


def test_two_model_inputs_on_one_band_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A 2-band file (blue, nir): ndwi-water would take band 2 as green (its index) and as nir (its name)."""
    scene = write_geotiff(tmp_path / "two.tif", random_image((2, 32, 32), seed=3), descriptions=["blue", "nir"])
    code, _, err = run(capsys, "run", "tile-infer", "-q", "--input", scene, "--output", tmp_path / "o",
                       "-m", "ndwi-water")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "band 2 for green, nir" in lines[0], lines
    code, _, err = run(capsys, "run", "tile-infer", "-q", "--input", scene, "--output", tmp_path / "o",
                       "-m", "ndwi-water", "--band", "green=1")
    assert code == 0, err
