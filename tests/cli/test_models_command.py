"""``attentive-norm models`` prints measured counts next to the paper's and flags mismatches."""

import pytest

from attentive_norm.cli.main import main
from attentive_norm.models.published import params_match


def test_models_table_lists_measured_and_published(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "mobilenetv2*", "--flops", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| mobilenetv2_an | 3,672,760 | 3,672,760 | yes |" in out
    assert "| mobilenetv2 | 3,504,872 | 3.505M | yes |" in out


def test_unknown_pattern_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="no model matches"):
        main(["models", "nonexistent*"])


def test_params_match_rules() -> None:
    assert params_match(25_557_032, 25_557_032)
    assert not params_match(25_557_033, 25_557_032)
    assert params_match(3_504_872, 3.505)
    assert not params_match(3_494_872, 3.505)
    assert params_match(1, None) is None
