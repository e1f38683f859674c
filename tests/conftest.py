"""Shared test fixtures."""
import jax
import pytest


@pytest.fixture(scope="module")
def fast_compiles():
  """Most XLA optimisations off for one test module: CPU compiles of the tiny models and
  the golden networks get 2-3x faster, and every tolerance still holds. Use with
  `pytestmark = pytest.mark.usefixtures("fast_compiles")`."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
