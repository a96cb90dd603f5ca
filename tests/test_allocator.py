"""rnnjax.allocator: the environment that selects an allocator (no re-exec in tests)."""

import os

import pytest

from rnnjax import allocator


def test_glibc_tuned_sets_the_malloc_variables_and_a_marker():
    env = allocator.allocator_env("glibc-tuned", {})
    assert env["MALLOC_MMAP_MAX_"] == "0"
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 2 ** 31
    assert env["RNNJAX_ALLOCATOR"] == "glibc-tuned"


def test_mimalloc_is_preloaded_in_front_of_an_existing_preload_or_refused_when_missing():
    path = allocator.mimalloc_path()
    if path is None:
        with pytest.raises(ValueError, match="cmeel-mimalloc"):
            allocator.allocator_env("mimalloc", {})
        assert allocator.allocator_env("auto", {})["RNNJAX_ALLOCATOR"] == "glibc-tuned"
    else:
        assert os.path.isfile(path)
        env = allocator.allocator_env("mimalloc", {"LD_PRELOAD": "/x/libother.so"})
        assert env["LD_PRELOAD"] == path + ":/x/libother.so"
        assert allocator.allocator_env("auto", {})["RNNJAX_ALLOCATOR"] == "mimalloc"


def test_unknown_allocator_names_the_accepted_ones():
    with pytest.raises(ValueError, match="accepted: auto, mimalloc, glibc-tuned, system"):
        allocator.allocator_env("jemalloc", {})
