"""Shared test fixtures, and one XLA compilation cache for the whole test run."""
import os
import shutil
import tempfile

import jax
import pytest

_CACHE_ENV = "CLIP2PROTECT_TEST_XLA_CACHE"
_OWN_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
  """Many tests compile the same programs (the tiny pipeline's networks, run by several
  jobs): a persistent compilation cache, shared by the pytest-xdist workers (they inherit
  the directory through the environment), compiles each once per run. A cache the user
  configured is left alone; the run's own directory is removed at the end."""
  if jax.config.jax_compilation_cache_dir:
    return
  if _CACHE_ENV not in os.environ:  # xdist's controller (or a run without workers)
    os.environ[_CACHE_ENV] = config.stash[_OWN_CACHE] = tempfile.mkdtemp(
        prefix="clip2protect_jax_xla_cache_")
  jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_unconfigure(config):
  if _OWN_CACHE in config.stash:
    shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)


@pytest.fixture(scope="module")
def fast_compiles():
  """Most XLA optimisations off for one test module: CPU compiles of the tiny models and
  the golden networks get 2-3x faster, and every tolerance still holds; a module whose
  time goes into running its programs rather than compiling them can get slower (measure
  it). Use with `pytestmark = pytest.mark.usefixtures("fast_compiles")`."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
