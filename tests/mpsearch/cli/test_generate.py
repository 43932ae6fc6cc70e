"""`mpsearch generate`: an image or a grid from the demo model; damaged weights are one error line."""

from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.planning.plan import Plan

runner = CliRunner()


def test_generate_writes_an_image_and_a_grid(tmp_path):
    from PIL import Image

    one = tmp_path / "one.png"
    result = runner.invoke(app, ["generate", "-p", "a red circle at the top left", "-o", str(one), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert Image.open(one).size == (32, 32)
    grid = tmp_path / "grid.png"
    result = runner.invoke(app, ["generate", "-p", "a red circle at the top left", "-p", "a blue square in the center",
                                 "-o", str(grid), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert Image.open(grid).size[0] > 2 * 32
    assert runner.invoke(app, ["generate", "-o", str(grid)]).exit_code == 2



def test_generate_refuses_damaged_weights_in_one_line(tiny_pipe, tmp_path):
    """A truncated weights file, in an exported checkpoint or a model folder, is one error line, exit 2."""
    from mpsearch.export.write import export
    from mpsearch.model import inventory

    model, q = tmp_path / "model", tmp_path / "q"
    tiny_pipe.save_pretrained(model)
    export(Plan.uniform(inventory(tiny_pipe), 4), q, model=str(model))
    for folder, weights in ((q, q / "unet" / "mpsearch_quantized.safetensors"),
                            (model, next((model / "text_encoder").glob("*.safetensors")))):
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        option = "--quantized" if folder == q else "--model"
        result = runner.invoke(app, ["generate", "-p", "a red circle", option, str(folder), "-o", str(tmp_path / "g.png")])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == result.stderr.splitlines()[0]
        assert result.stderr.startswith(f"error: {folder}: a weights file is damaged or truncated")
        assert not (tmp_path / "g.png").exists()
