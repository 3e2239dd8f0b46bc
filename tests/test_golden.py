"""The paper's path gives bit-identical numbers to those recorded before the
package was reorganised (``golden_runs.py``)."""

import json

import jax
import pytest

import golden_runs

pytestmark = pytest.mark.slow  # three whole runs, bit for bit


def _canonical(run: dict) -> str:
  # JSON text: NaN metrics compare equal to themselves, floats by their exact repr.
  return json.dumps(run, sort_keys=True)


@pytest.fixture(scope="module")
def golden():
  data = json.loads(golden_runs.GOLDEN.read_text())
  if data["jax_version"] != jax.__version__:
    pytest.skip(f"recorded with jax {data['jax_version']}, running {jax.__version__}: "
                "XLA's float rounding may differ between versions")
  return data["runs"]


@pytest.mark.parametrize("mode", ["distilled", "exact"])
def test_toy_paper_path_is_bit_identical(golden, mode):
  assert _canonical(golden_runs.toy_run(mode)) == _canonical(golden[f"toy_{mode}"])


def test_tiny_attack_paper_path_is_bit_identical(golden):
  assert _canonical(golden_runs.tiny_attack_run()) == _canonical(golden["tiny_attack"])
